"""Sparse-K through ggml's RPC backend, on this machine only: two ggml-rpc-server processes on 127.0.0.1 hold the
layers (-ngl 99), llama-perplexity drives them with `--rpc`.

- the op, its parameters and the score copy of K travel over RPC: perplexity equals the local run's;
- a server stopped mid-run is a clear error within a bounded time, never a hang or a crash (patch 0016);
- a stock server (upstream op numbering) is refused at the handshake with a message, and a stock client is
  refused by a patched server (patch 0015);
- under -sm layer (the default) and -sm tensor (ggml's meta backend over the two RPC devices, the KV heads split
  between them) Sparse-K gives the local run's results; mode token, which pools all heads, is refused under -sm
  tensor when the context is set up, naming the split mode;
- under -sm tensor a restored state (llama-completion --prompt-cache) rebuilds each device's slice of the score
  copy from K: the continuation equals the unrestored one.
"""

from __future__ import annotations

import dataclasses
import filecmp
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from pysparsek.llamacpp import rpc
from pysparsek.llamacpp.build import Build
from pysparsek.measure import perplexity, splits
from pysparsek.measure.perplexity import Settings
from pysparsek.sparsek.settings import SparsekSettings

pytestmark = [pytest.mark.build, pytest.mark.slow]

# group selection from the q4_0 copy of K, on both attention paths' most used one (flash attention)
SPARSE = Settings(ctx=256, chunks=3, batch=1024, ubatch=256, threads=2, flash_attn="on",
                  sparsek=SparsekSettings(top_k=64, mode="group", score_type="q4_0"))
BOUND_S = 60.0  # a failing run must end within this
# under -sm tensor both servers compute at once: one thread each keeps the two cores of a CI machine from being
# oversubscribed (ggml's threads spin at every barrier while a partner is descheduled); values do not depend on it
SPLIT_THREADS = 1


# the other settings of issue #19 point 1 that the tensor split is held to one device with (SPARSE is the third)
TENSOR_SETTINGS = {
    "group": SPARSE.with_sparsek(score_type=None),
    "group-q4_0": SPARSE,
    "head": SPARSE.with_sparsek(mode="head", score_type=None),
    "head-q4_0": SPARSE.with_sparsek(mode="head"),
}


def _remote(s: Settings, endpoints: str, *more: str) -> Settings:
    return splits.remote(s, endpoints, *more)


def _run(cmd: list[str], timeout_s: float = BOUND_S) -> subprocess.CompletedProcess[str]:
    start = time.monotonic()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout_s)
    assert time.monotonic() - start < timeout_s
    return proc


def _no_crash(proc: subprocess.CompletedProcess[str] | subprocess.Popen[bytes], output: str) -> None:
    """Exited by itself, not killed by a signal (abort, segfault, SIGPIPE), and no failed assertion."""
    assert proc.returncode is not None and proc.returncode >= 0, f"exit {proc.returncode}:\n{output[-3000:]}"
    assert "GGML_ASSERT" not in output, output[-3000:]


def _failed_cleanly(proc: subprocess.CompletedProcess[str], output: str) -> None:
    _no_crash(proc, output)
    assert proc.returncode > 0, f"exit {proc.returncode}:\n{output[-3000:]}"


@pytest.fixture(scope="module")
def local_runs(patched_build: Build, model: Path, short_text: Path,
               tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[perplexity.PerplexityResult, Path]]:
    out = tmp_path_factory.mktemp("local")
    runs = {}
    for name, s in (("dense", SPARSE.with_sparsek(top_k=0, score_type=None)), ("sparse", SPARSE),
                    *TENSOR_SETTINGS.items()):
        if name == "group-q4_0":
            runs[name] = runs["sparse"]
            continue
        runs[name] = (perplexity.measure(patched_build, model, short_text, s, save_logits=out / f"{name}.bin"),
                      out / f"{name}.bin")
    return runs


def test_rpc_perplexity_equals_local(local_runs, patched_build: Build, model: Path, short_text: Path,
                                     tmp_path: Path) -> None:
    """Dense and Sparse-K (K=64 group and head, with and without the q4_0 copy) over two local servers, layers
    split between them (-sm layer): the same per-chunk values, final estimate and per-token log-probabilities as
    the local run, byte for byte."""
    dense_local, sparse_local = local_runs["dense"][0], local_runs["sparse"][0]
    assert sparse_local.ppl > dense_local.ppl * 1.001, "Sparse-K changed nothing: the test would prove nothing"
    others = [(name, s) for name, s in TENSOR_SETTINGS.items() if name != "group-q4_0"]
    with rpc.local_servers(patched_build, 2, tmp_path, threads=2) as servers:
        for name, s in (("dense", SPARSE.with_sparsek(top_k=0, score_type=None)), ("sparse", SPARSE), *others):
            out = tmp_path / f"{name}-rpc.bin"
            # GGML_SCHED_DEBUG lists each split's backend and nodes: the Sparse-K op must run on a server
            debug = name == "sparse"
            res = perplexity.measure(patched_build, model, short_text,
                                     _remote(s, servers.endpoints, *splits.LAYER, "-lv", "5" if debug else "4"),
                                     save_logits=out,
                                     env={"GGML_SCHED_DEBUG": "2"} if debug else None)
            local, local_file = local_runs[name]
            assert (res.chunks, res.final, res.final_stderr) == (local.chunks, local.final, local.final_stderr), name
            assert filecmp.cmp(out, local_file, shallow=False), f"{name}: per-token log-probabilities differ"
            for server in servers.servers:
                assert re.search(rf"RPC\d+\[{re.escape(server.endpoint)}\] model buffer size", res.output), \
                    f"no layers on {server.endpoint}"
            if name == "sparse":
                assert "Sparse-K score cache (q4_0)" in res.output
                assert rpc_nodes(res.output, "SPARSEK_MASK"), "the Sparse-K op did not run on an RPC server"


def rpc_nodes(output: str, op: str) -> list[str]:
    """Scheduler debug lines (GGML_SCHED_DEBUG=2) of nodes with op `op` placed on an RPC backend: they read
    `node # 21 (FLASH_ATTN):  node_21 (   2K) [RPC0[  ] ...`, the op name cut to 10 characters."""
    line = re.compile(rf"node #\s*\d+ \(\s*{re.escape(op[:10])}\):[^\[]*\[RPC")
    return line.findall(output)


def test_rpc_server_stopped_mid_run(patched_build: Build, model: Path, short_text: Path, tmp_path: Path) -> None:
    """SIGKILL one of the two servers after the first chunk: llama-perplexity names the lost server, its next decode
    fails, and it exits by itself within BOUND_S, without a final estimate (upstream llama-perplexity exits 0 after a
    failed decode; pysparsek.perplexity treats the missing estimate as the error)."""
    s = dataclasses.replace(SPARSE, chunks=40, batch=256)  # one chunk per decode call, long enough to interrupt
    log = tmp_path / "client.log"
    with rpc.local_servers(patched_build, 2, tmp_path, threads=2) as servers:
        cmd = perplexity.command(patched_build, model, short_text, _remote(s, servers.endpoints))
        with log.open("wb") as out:
            client = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while "[1]" not in log.read_text(errors="replace"):
                assert client.poll() is None, log.read_text(errors="replace")[-3000:]
                assert time.monotonic() < deadline, "no chunk within 120 s"
                time.sleep(0.1)
            servers.servers[1].proc.send_signal(signal.SIGKILL)
            stopped = time.monotonic()
            client.wait(timeout=BOUND_S)
            elapsed = time.monotonic() - stopped
        finally:
            if client.poll() is None:
                client.kill()
                client.wait()
    output = log.read_text(errors="replace")
    _no_crash(client, output)
    assert f"RPC server {servers.servers[1].endpoint}: connection lost" in output, output[-3000:]
    assert "failed to decode" in output, output[-3000:]
    assert "Final estimate" not in output
    assert elapsed < BOUND_S


def test_stock_server_is_refused(stock_build: Build, patched_build: Build, model: Path, short_text: Path,
                                 tmp_path: Path) -> None:
    """The stock server numbers ops as upstream does (every op after GGML_OP_FILL one lower): the patched client
    refuses it at the handshake, and the patched server refuses a stock client."""
    with rpc.local_servers(stock_build, 1, tmp_path, threads=2) as stock_server:
        proc = _run(perplexity.command(patched_build, model, short_text,
                                       _remote(SPARSE, stock_server.endpoints)))
        _failed_cleanly(proc, proc.stdout)
        assert f"RPC server {stock_server.endpoints} refused this client's HELLO" in proc.stdout, proc.stdout[-3000:]
        assert f"cannot use RPC server {stock_server.endpoints}" in proc.stdout
        assert stock_server.servers[0].proc.poll() is None, "the stock server died"

    with rpc.local_servers(patched_build, 1, tmp_path, threads=2) as patched_server:
        # a stock client aborts on any failed handshake (upstream code, not ours): only the server side is ours
        proc = _run(perplexity.command(stock_build, model, short_text,
                                       _remote(SPARSE.without_sparsek(), patched_server.endpoints)))
        assert proc.returncode != 0
        server = patched_server.servers[0]
        assert "refusing a client without the op table check" in server.output()
        assert server.proc.poll() is None, "the patched server died"


def test_tensor_split_sparsek_equals_local(local_runs, stock_build: Build, patched_build: Build, model: Path,
                                           short_text: Path, tmp_path: Path) -> None:
    """-sm tensor over two RPC devices (the meta backend), the even layers' KV heads split 2:1 between them and the
    two products that sum across devices kept on the CPU (splits.TENSOR_EXACT): dense and Sparse-K K=64 group and
    head, with and without the q4_0 copy, give the local run's per-chunk values, final estimate and per-token
    log-probabilities byte for byte; the selection ran split (a SPARSEK_MASK slice on each server). Dense equals
    stock's run under the same split. Before patches 0021-0023 every Sparse-K setting aborted in
    ggml-backend-meta.cpp, then was refused."""
    dense = SPARSE.with_sparsek(top_k=0, score_type=None)
    with rpc.local_servers(stock_build, 2, tmp_path, threads=SPLIT_THREADS) as servers:
        stock = perplexity.measure(stock_build, model, short_text,
                                   _remote(dense.without_sparsek(), servers.endpoints, *splits.TENSOR_EXACT))
    with rpc.local_servers(patched_build, 2, tmp_path, threads=SPLIT_THREADS) as servers:
        for name, s in (("dense", dense), *TENSOR_SETTINGS.items()):
            out = tmp_path / f"{name}-tensor.bin"
            debug = name == "group-q4_0"
            more = ("-lv", "5") if debug else ()
            res = perplexity.measure(patched_build, model, short_text,
                                     _remote(s, servers.endpoints, *splits.TENSOR_EXACT, *more),
                                     save_logits=out, env={"GGML_META_DEBUG": "1"} if debug else None)
            local, local_file = local_runs[name]
            assert (res.chunks, res.final, res.final_stderr) == (local.chunks, local.final, local.final_stderr), name
            assert filecmp.cmp(out, local_file, shallow=False), f"{name}: per-token log-probabilities differ"
            if name == "dense":
                assert (res.chunks, res.final) == (stock.chunks, stock.final)
            if debug:
                assert "Sparse-K score cache (q4_0)" in res.output
                # SPLIT_STATE: {...} -> kq_mask_sparsek-0[SPARSEK_MASK, 2, {2x1, 1x1}]: rows of 2 and 1 KV heads
                slices = re.findall(r"-> kq_mask_sparsek-\d+\[SPARSEK_MASK, 2, \{(\d+)x1, (\d+)x1\}\]", res.output)
                assert any(int(a) > 0 and int(b) > 0 for a, b in slices), "the selection never ran split"


def test_tensor_split_even_runs_sparsek(local_runs, stock_build: Build, patched_build: Build, model: Path,
                                        short_text: Path, tmp_path: Path) -> None:
    """-sm tensor with llama.cpp's even split (the FFN in halves, each layer's heads on one server): dense equals
    stock's run under the same split; every Sparse-K setting runs (no abort) and stays as close to the local run
    as dense does. Summing the split FFN products in another order changes SmolLM2's results (about 1 % in PPL,
    dense too: the 8-bit quantized activations amplify the rounding), so this is a KL divergence bound, not
    identity."""
    dense = dataclasses.replace(SPARSE.with_sparsek(top_k=0, score_type=None), chunks=1)
    with rpc.local_servers(stock_build, 2, tmp_path, threads=SPLIT_THREADS) as servers:
        stock = perplexity.measure(stock_build, model, short_text,
                                   _remote(dense.without_sparsek(), servers.endpoints, *splits.TENSOR))
    with rpc.local_servers(patched_build, 2, tmp_path, threads=SPLIT_THREADS) as servers:
        ok = perplexity.measure(patched_build, model, short_text, _remote(dense, servers.endpoints, *splits.TENSOR))
        assert (ok.chunks, ok.final, ok.final_stderr) == (stock.chunks, stock.final, stock.final_stderr)
        kld = {}
        for name, s in (("dense", SPARSE.with_sparsek(top_k=0, score_type=None)), *TENSOR_SETTINGS.items()):
            res = perplexity.measure(patched_build, model, short_text, _remote(s, servers.endpoints, *splits.TENSOR),
                                     kld_base=local_runs[name][1])
            assert res.kld_mean is not None
            kld[name] = res.kld_mean
        assert all(value < 3*kld["dense"] + 0.002 for value in kld.values()), kld


def test_tensor_split_refuses_token(patched_build: Build, model: Path, short_text: Path, tmp_path: Path) -> None:
    """Mode token pools the scores of all query heads, which -sm tensor spreads over the devices: refused when the
    context is set up, naming the split mode, never an abort in the meta backend."""
    s = dataclasses.replace(SPARSE.with_sparsek(mode="token"), chunks=1)
    with rpc.local_servers(patched_build, 2, tmp_path, threads=SPLIT_THREADS) as servers:
        proc = _run(perplexity.command(patched_build, model, short_text,
                                       _remote(s, servers.endpoints, *splits.TENSOR)))
    _failed_cleanly(proc, proc.stdout)
    assert "Sparse-K mode token pools the scores of all query heads" in proc.stdout, proc.stdout[-3000:]
    assert "LLAMA_SPLIT_MODE_TENSOR (-sm tensor)" in proc.stdout
    assert "Final estimate" not in proc.stdout


def _completion(build: Build, model: Path, prompt: Path, s: SparsekSettings, endpoints: str,
                cache: Path) -> subprocess.CompletedProcess[str]:
    """llama-completion, greedy, 12 tokens after `prompt`, under the exact tensor split over `endpoints`, its state
    saved to (first run) or loaded from (later runs) `cache`."""
    cmd = [str(build.tool("llama-completion")), "-m", str(model), "-f", str(prompt), "-n", "12", "--temp", "0",
           "-c", "256", "-b", "256", "-ub", "256", "-fa", "on", "-t", "2", "-no-cnv", "--no-display-prompt",
           "--no-warmup", "-lv", "4", "--prompt-cache", str(cache), *s.flags(),
           "-ngl", "99", "--rpc", endpoints, *splits.TENSOR_EXACT]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


@pytest.mark.parametrize("score_type", ["f16", "q4_0"])
def test_tensor_split_restored_state_rebuilds_the_copy(patched_build: Build, model: Path, short_text: Path,
                                                        tmp_path: Path, score_type: str) -> None:
    """-sm tensor (the exact split) with a score copy: llama-completion saves its prompt's state (--prompt-cache) and
    a second run loads it. The state holds K only, so each device derives its KV heads' copy of the restored cells
    from K, one KV head's run of cells at a time (the head-major copy is split along its KV heads: patches
    0027-0028); the greedy continuation then equals the one of the run that evaluated the prompt itself, and with
    the f16 copy, which holds exactly K, the one of scoring from K. K=16, so the restored copy decides."""
    prompt = tmp_path / "prompt.txt"
    prompt.write_text(short_text.read_text(encoding="utf-8")[:700], encoding="utf-8")
    sk = SparsekSettings(top_k=16, mode="group", score_type=score_type)
    with rpc.local_servers(patched_build, 2, tmp_path, threads=SPLIT_THREADS) as servers:
        first = _completion(patched_build, model, prompt, sk, servers.endpoints, tmp_path / "state.bin")
        assert first.returncode == 0, first.stderr[-3000:]
        assert (tmp_path / "state.bin").is_file()
        again = _completion(patched_build, model, prompt, sk, servers.endpoints, tmp_path / "state.bin")
        assert again.returncode == 0, again.stderr[-3000:]
        from_k = _completion(patched_build, model, prompt, sk.replace(score_type=None), servers.endpoints,
                             tmp_path / "state-k.bin")
        assert from_k.returncode == 0, from_k.stderr[-3000:]
    assert f"Sparse-K score cache ({score_type})" in first.stderr
    assert "loaded a session" in again.stderr, again.stderr[-3000:]
    assert first.stdout.strip() and again.stdout == first.stdout
    if score_type == "f16":
        assert from_k.stdout == first.stdout
