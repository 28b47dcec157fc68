"""`pysparsek bench`: argument parsing, error paths, the report it writes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pysparsek import bench, cli


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pysparsek", *args], capture_output=True, text=True, check=False)


def test_defaults_follow_llama_cpp_names() -> None:
    args = cli.build_parser().parse_args(["bench", "m.gguf", "--topk", "32,64", "-c", "1024", "-t", "2", "-ngl", "99",
                                          "-fa", "off", "-b", "512", "-ub", "128", "--depths", "0,2048,8192"])
    o = cli.bench_options(args, Path("m.gguf"), Path("t.txt"))
    assert (o.topks, o.ctx, o.threads, o.ngl, o.flash_attn, o.batch, o.ubatch) == ([32, 64], 1024, 2, 99, False, 512,
                                                                                    128)
    assert o.depths == [0, 2048, 8192]
    assert o.mode == "head" and o.window == 0


@pytest.mark.parametrize(("argv", "needle"), [
    (["--topk", "0"], "--topk"),
    (["--topk", "-8"], "--topk"),
    (["--backend", "rocm"], "--backend"),
    (["--mode", "diagonal"], "--mode"),
    (["--depths", "0,-1"], "--depths"),
    (["-c", "0"], "--ctx-size"),
    (["--rpc", "localhost"], "--rpc"),
    (["--rpc", "host:0"], "--rpc"),
])
def test_bad_arguments_exit_2_with_the_option_named(argv: list[str], needle: str) -> None:
    proc = _run("bench", *argv)
    assert proc.returncode == 2
    assert needle in proc.stderr


def test_rpc_puts_the_patched_layers_on_the_servers() -> None:
    args = cli.build_parser().parse_args(["bench", "m.gguf", "--rpc", "10.0.0.2:50052, 10.0.0.3:50052"])
    o = cli.bench_options(args, Path("m.gguf"), Path("t.txt"))
    assert o.rpc == "10.0.0.2:50052,10.0.0.3:50052"
    assert bench.remote_args(o) == (99, ("--rpc", "10.0.0.2:50052,10.0.0.3:50052"))
    o.ngl = 20
    assert bench.remote_args(o)[0] == 20
    o.rpc = ""
    assert bench.remote_args(o) == (20, ())


def test_rpc_with_the_decode_regime_is_one_clear_line() -> None:
    proc = _run("bench", "--rpc", "127.0.0.1:1", "--regime", "decode")
    assert proc.returncode == 2
    assert proc.stderr.startswith("pysparsek: error: --rpc applies to the prompt regime"), proc.stderr


def test_missing_text_is_one_clear_line(tmp_path: Path) -> None:
    proc = _run("bench", "--text", str(tmp_path / "none.txt"))
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"pysparsek: error: text file not found: {tmp_path / 'none.txt'}"


def test_corrupt_gguf_is_one_clear_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGML\x00\x00")
    proc = _run("bench", str(bad))
    assert proc.returncode == 2
    assert "is not a GGUF file" in proc.stderr


@pytest.mark.build
def test_text_shorter_than_two_contexts_is_explained(tmp_path: Path, patched_build, stock_build, model) -> None:
    # `model` fetches the default model first, so its one-time download line is not part of this output
    short = tmp_path / "short.txt"
    short.write_text("Only a few words here.\n")
    proc = _run("bench", "--text", str(short), "-c", "256", "--skip-speed", "--quiet")
    assert proc.returncode == 2
    assert "is too short: llama-perplexity needs at least 512 tokens" in proc.stderr
    assert proc.stderr.count("\n") == 1


@pytest.mark.build
def test_cuda_without_a_gpu_is_one_clear_line() -> None:
    from pysparsek import machine

    if machine.gpus():
        pytest.skip("this machine has an NVIDIA GPU")
    proc = _run("bench", "--backend", "cuda", "--skip-speed")
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("pysparsek: error: backend 'cuda' requested, but no NVIDIA GPU is visible here "
                                   "(nvidia-smi lists none)")


@pytest.mark.build
@pytest.mark.slow
def test_bench_writes_a_complete_report(tmp_path: Path, patched_build, stock_build, short_text: Path) -> None:
    out = tmp_path / "report"
    proc = _run("bench", "--text", str(short_text), "--topk", "16,64", "-c", "128", "--chunks", "2", "--depths",
                "0,256", "--n-prompt", "64", "--n-gen", "4", "--reps", "1", "--rounds", "2", "-t", "2", "--quiet",
                "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in ("results.json", "report.md", "ppl_kl_vs_k.png", "tps_vs_depth.png"):
        assert (out / name).is_file(), name
    doc = json.loads((out / "results.json").read_text())
    assert doc["schema"] == bench.SCHEMA
    assert doc["llama_cpp_pin"] == "0c1e57098bba43ac29e6e3b677cdceebdd22334f"
    assert len(doc["model"]["sha256"]) == 64 and doc["machine"]["cores"]
    q = doc["quality"]
    assert q["identical"] is True
    assert [s["top_k"] for s in q["sparse"]] == [16, 64]
    assert all(s["kl_mean"] >= 0 and 0 <= s["top1_agreement_pct"] <= 100 for s in q["sparse"])
    sp = doc["speed"]
    assert {(d["test"], d["depth"]) for d in sp["dense"]} == {("pp64", 0), ("pp64", 256), ("tg4", 0), ("tg4", 256)}
    assert {(s["top_k"], s["test"], s["depth"]) for s in sp["sparse"]} == {
        (k, t, d) for k in (16, 64) for t in ("pp64", "tg4") for d in (0, 256)}
    assert all(len(s["samples_ts"]) == 2 and s["ratio_min"] <= s["ratio"] <= s["ratio_max"] for s in sp["sparse"])
    # raw llama-bench records: 3 configs x 2 rounds x 2 tests x 2 depths, with the Sparse-K fields that ran
    recs = doc["llama_bench_records"]
    assert len(recs) == 24
    assert sorted({r["sparsek_topk"] for r in recs}) == [0, 16, 64]
    assert "| K" not in proc.stdout and "ΔPPL" in proc.stdout
    # the closing lines name the deepest depth's ratio per K, as measured
    ratio = next(s["ratio"] for s in sp["sparse"] if (s["top_k"], s["test"], s["depth"]) == (64, "tg4", 256))
    assert "at depth 256" in proc.stdout and f"K=64 head: decode (tg4) {ratio:.2f}×" in proc.stdout


def test_dense_and_each_mode_share_one_llama_bench_run_per_round() -> None:
    from pysparsek.speed import Batch, Config, batches

    assert batches([Config(), Config(64), Config(256)]) == [Batch("head", 0, 0, [0, 64, 256], ("none",))]
    assert batches([Config(), Config(64, "group"), Config(64, "token"), Config(256, "group")]) == [
        Batch("group", 0, 0, [0, 64, 256], ("none",)), Batch("token", 0, 0, [64], ("none",))]
    assert batches([Config()]) == [Batch("head", 0, 0, [0], ("none",))]
    # score types share the process (dense stays without a score copy); a policy gets its own process
    assert batches([Config(), Config(64, score_type="q4_0"), Config(64, max_ubatch=1)]) == [
        Batch("head", 0, 0, [0, 64], ("none", "q4_0")), Batch("head", 0, 1, [64], ("none",))]


def test_llama_bench_records_map_back_to_configs() -> None:
    from pysparsek.speed import Config, record_config

    rec = {"sparsek_topk": 64, "sparsek_mode": "group", "sparsek_window": 0, "sparsek_score_type": "q4_0",
           "sparsek_max_ubatch": 1}
    assert record_config(rec) == Config(64, "group", 0, "q4_0", 1)
    # dense that writes a score copy is not dense
    assert record_config({**rec, "sparsek_topk": 0}) != Config()
    assert record_config({**rec, "sparsek_topk": 0, "sparsek_score_type": "none"}) == Config()
