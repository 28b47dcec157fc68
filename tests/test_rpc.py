"""Sparse-K through ggml's RPC backend, on this machine only: two ggml-rpc-server processes on 127.0.0.1 hold the
layers (-ngl 99), llama-perplexity drives them with `--rpc`.

- the op, its parameters and the score copy of K travel over RPC: perplexity equals the local run's;
- a server stopped mid-run is a clear error within a bounded time, never a hang or a crash (patch 0016);
- a stock server (upstream op numbering) is refused at the handshake with a message, and a stock client is
  refused by a patched server (patch 0015);
- under -sm tensor (the meta backend over the two RPC devices) Sparse-K is refused when the context is set up,
  naming the split mode, instead of aborting in the meta backend.
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
from pysparsek.measure import perplexity
from pysparsek.measure.perplexity import Settings
from pysparsek.sparsek.settings import SparsekSettings

pytestmark = [pytest.mark.build, pytest.mark.slow]

# group selection from the q4_0 copy of K, on both attention paths' most used one (flash attention)
SPARSE = Settings(ctx=256, chunks=3, batch=1024, ubatch=256, threads=2, flash_attn="on",
                  sparsek=SparsekSettings(top_k=64, mode="group", score_type="q4_0"))
BOUND_S = 60.0  # a failing run must end within this


def _remote(s: Settings, endpoints: str, *more: str) -> Settings:
    return dataclasses.replace(s, extra=("-ngl", "99", "--rpc", endpoints, *more))


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
    for name, s in (("dense", SPARSE.with_sparsek(top_k=0, score_type=None)), ("sparse", SPARSE)):
        runs[name] = (perplexity.measure(patched_build, model, short_text, s, save_logits=out / f"{name}.bin"),
                      out / f"{name}.bin")
    return runs


def test_rpc_perplexity_equals_local(local_runs, patched_build: Build, model: Path, short_text: Path,
                                     tmp_path: Path) -> None:
    """Dense and Sparse-K (K=64 group, q4_0 copy) over two local servers: the same per-chunk values, final
    estimate and per-token log-probabilities as the local run, byte for byte."""
    dense_local, sparse_local = local_runs["dense"][0], local_runs["sparse"][0]
    assert sparse_local.ppl > dense_local.ppl * 1.001, "Sparse-K changed nothing: the test would prove nothing"
    with rpc.local_servers(patched_build, 2, tmp_path, threads=2) as servers:
        for name, s in (("dense", SPARSE.with_sparsek(top_k=0, score_type=None)), ("sparse", SPARSE)):
            out = tmp_path / f"{name}-rpc.bin"
            # GGML_SCHED_DEBUG lists each split's backend and nodes: the Sparse-K op must run on a server
            debug = name == "sparse"
            res = perplexity.measure(patched_build, model, short_text,
                                     _remote(s, servers.endpoints, "-lv", "5" if debug else "4"), save_logits=out,
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


def test_tensor_split_refuses_sparsek(stock_build: Build, patched_build: Build, model: Path, short_text: Path,
                                     tmp_path: Path) -> None:
    """-sm tensor over two RPC devices (the meta backend): dense runs and prints stock's estimate under the same
    split; Sparse-K, and a score copy of K alone, are refused with the split mode named. Without the refusal every
    one of them aborted in ggml-backend-meta.cpp (results/rpc-tensor-split-cpu.txt)."""
    dense = dataclasses.replace(SPARSE.with_sparsek(top_k=0, score_type=None), chunks=1)
    with rpc.local_servers(stock_build, 2, tmp_path, threads=2) as servers:
        stock = perplexity.measure(stock_build, model, short_text,
                                   _remote(dense.without_sparsek(), servers.endpoints, "-sm", "tensor"))
    with rpc.local_servers(patched_build, 2, tmp_path, threads=2) as servers:
        ok = perplexity.measure(patched_build, model, short_text, _remote(dense, servers.endpoints, "-sm", "tensor"))
        assert (ok.chunks, ok.final, ok.final_stderr) == (stock.chunks, stock.final, stock.final_stderr)
        for s in (dataclasses.replace(SPARSE, chunks=1), dense.with_sparsek(score_type="q4_0")):
            proc = _run(perplexity.command(patched_build, model, short_text,
                                           _remote(s, servers.endpoints, "-sm", "tensor")))
            _failed_cleanly(proc, proc.stdout)
            assert "the model is split with LLAMA_SPLIT_MODE_TENSOR (-sm tensor)" in proc.stdout, proc.stdout[-3000:]
            assert "Final estimate" not in proc.stdout
