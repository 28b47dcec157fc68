"""`pysparsek bench`: argument parsing, error paths, the report it writes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pysparsek.measure import bench, results
from pysparsek.sparsek.settings import SparsekSettings


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pysparsek", *args], capture_output=True, text=True, check=False)


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
    proc = _run("bench", "--text", str(short), "-c", "256", "--exact", "--skip-speed", "--quiet")
    assert proc.returncode == 2
    assert "is too short: llama-perplexity needs at least 512 tokens" in proc.stderr
    assert proc.stderr.count("\n") == 1


@pytest.mark.build
def test_cuda_without_a_gpu_is_one_clear_line() -> None:
    from pysparsek.measure import machine

    if machine.gpus():
        pytest.skip("this machine has an NVIDIA GPU")
    proc = _run("bench", "--backend", "cuda", "--skip-speed")
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("pysparsek: error: backend 'cuda' requested, but no NVIDIA GPU is visible here "
                                   "(nvidia-smi lists none)")


# One bench run serves the tests of the report below (each full run costs minutes of CI on 2 cores): --exact with
# stride, sinks and group mode given, prompt-regime quality, no quantized-cache rows.
SETTING = SparsekSettings(mode="group", stride=16, sinks=4)


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory: pytest.TempPathFactory, patched_build, stock_build,
              short_text: Path) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path_factory.mktemp("bench") / "report"
    proc = _run("bench", "--text", str(short_text), "--topk", "16,64", "--mode", "group", "--stride", "16", "--sinks",
                "4", "-c", "128", "--chunks", "2", "--depths", "0,256", "--n-prompt", "64", "--n-gen", "4", "--reps",
                "1", "--processes", "2", "-t", "2", "--quiet", "--exact", "--cache-types", "none", "--out", str(out))
    return proc, out


@pytest.mark.build
@pytest.mark.slow
def test_bench_writes_a_complete_report(bench_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    proc, out = bench_run
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in ("results.json", "report.md", "ppl_kl_vs_k.png", "tps_vs_depth.png"):
        assert (out / name).is_file(), name
    doc = json.loads((out / "results.json").read_text())
    assert doc["schema"] == results.SCHEMA
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
    assert all(s["spread"] == max(s["samples_ts"]) / min(s["samples_ts"]) for s in sp["sparse"] + sp["dense"])
    assert all(s["cache_type"] == "f16" for s in sp["sparse"])
    # raw llama-bench records: 3 configs x 2 processes x 2 tests x 2 depths, with the Sparse-K fields that ran
    recs = doc["llama_bench_records"]
    assert len(recs) == 24
    assert sorted({r["sparsek_topk"] for r in recs}) == [0, 16, 64]
    assert "| K" not in proc.stdout and "ΔPPL" in proc.stdout
    # the closing lines name the deepest depth's ratio per K, as measured
    ratio = next(s["ratio"] for s in sp["sparse"] if (s["top_k"], s["test"], s["depth"]) == (64, "tg4", 256))
    assert "at depth 256" in proc.stdout and f"K=64 group stride=16 sinks=4: decode (tg4) {ratio:.2f}×" in proc.stdout


@pytest.mark.build
@pytest.mark.slow
def test_bench_speed_runs_use_exactly_the_setting_whose_quality_it_reports(
        bench_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    """`bench --sinks 4 --stride 16`: llama-bench's own records say every Sparse-K run had stride 16 and sinks 4
    (before llama-bench had those flags, speed silently ran without them)."""
    proc, out = bench_run
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = results.BenchResult.from_json(json.loads((out / "results.json").read_text()))
    for k in (16, 64):
        want = SETTING.replace(top_k=k).resolved()
        assert r.options.at(k) == want
        sparse = [rec for rec in r.llama_bench_records if rec["sparsek_topk"] == k]
        assert sparse and {SparsekSettings.from_bench_record(rec) for rec in sparse} == {want}
        assert {row.settings for row in r.speed.sparse if row.top_k == k} == {want}
    assert "K=16 group stride=16 sinks=4" in proc.stdout


def test_bench_quality_runs_get_the_same_setting() -> None:
    """The llama-perplexity command of bench's quality runs carries the setting its speed runs use."""
    from pysparsek.measure import perplexity

    o = results.BenchOptions(Path("m.gguf"), Path("t.txt"), [16], SparsekSettings(stride=16, sinks=4))

    class FakeBuild:
        backend = "cpu"

        def tool(self, name: str) -> Path:
            return Path("/bin") / name

    cmd = perplexity.command(FakeBuild(), o.model, o.text, bench._settings(o).with_sparsek(top_k=16))
    flags = {cmd[i]: cmd[i + 1] for i in range(len(cmd) - 1) if cmd[i].startswith("--sparsek-")}
    assert flags == {"--sparsek-topk": "16", "--sparsek-window": "0", "--sparsek-stride": "16",
                     "--sparsek-sinks": "4", "--sparsek-mode": "head", "--sparsek-score-type": "none",
                     "--sparsek-max-ubatch": "0", "--sparsek-sparq-r": "0",
                     "--sparsek-sparq-shared": "0"}


def test_dense_and_every_mode_share_one_llama_bench_run_per_round() -> None:
    """K, score type and mode are llama-bench sweeps: one process fills the cache once for all of them."""
    from pysparsek.measure.speed import DENSE, Batch, batches

    base = SparsekSettings(mode="head").resolved().replace(top_k=None, score_type=None, mode=None)
    S = SparsekSettings
    assert batches([DENSE, S(top_k=64), S(top_k=256)]) == [Batch(base, (0, 64, 256), ("none",), ("head",))]
    assert batches([DENSE, S(top_k=64, mode="group"), S(top_k=64, mode="token"), S(top_k=256, mode="group")]) == [
        Batch(base, (0, 64, 256), ("none",), ("group", "token"))]
    assert batches([DENSE]) == [Batch(base, (0,), ("none",), ("head",))]
    # score types share the process (dense stays without a score copy); a policy, a stride or sinks get their own
    assert batches([DENSE, S(top_k=64, score_type="q4_0"), S(top_k=64, max_ubatch=1),
                    S(top_k=64, stride=16, sinks=4)]) == [
        Batch(base, (0, 64), ("none", "q4_0"), ("head",)),
        Batch(base.replace(max_ubatch=1), (64,), ("none",), ("head",)),
        Batch(base.replace(stride=16, sinks=4), (64,), ("none",), ("head",))]


def test_llama_bench_records_map_back_to_settings() -> None:
    from pysparsek.measure.speed import DENSE, record_config

    rec = {"sparsek_topk": 64, "sparsek_mode": "group", "sparsek_window": 0, "sparsek_stride": 16,
           "sparsek_sinks": 4, "sparsek_score_type": "q4_0", "sparsek_max_ubatch": 1}
    assert record_config(rec) == SparsekSettings.off().replace(top_k=64, mode="group", stride=16, sinks=4,
                                                               score_type="q4_0", max_ubatch=1)
    # dense that writes a score copy is not dense; the other fields do not change what dense runs
    assert record_config({**rec, "sparsek_topk": 0}) != DENSE
    assert record_config({**rec, "sparsek_topk": 0, "sparsek_score_type": "none"}) == DENSE


def test_one_llama_bench_process_gets_every_field_explicitly(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing is left to the model's metadata: the command names each field's value."""
    from pysparsek.measure import speed

    seen: list[list[str]] = []

    class Done:
        stdout = "[]"

    def fake_run(cmd: list[str], **_: object) -> Done:
        seen.append(cmd)
        return Done()

    class FakeBuild:
        def tool(self, name: str) -> Path:
            return Path("/bin") / name

    monkeypatch.setattr(speed, "run", fake_run)
    want = SparsekSettings(top_k=64, mode="group", window=64, stride=16, sinks=4)
    speed.interleaved(FakeBuild(), Path("m.gguf"), [speed.DENSE, want], processes=1, n_prompt=8, n_gen=4,
                      depths=[0])
    cmd = seen[0]
    flags = {cmd[i]: cmd[i + 1] for i in range(len(cmd) - 1) if cmd[i].startswith("-sk")}
    assert flags == {"-sk": "0,64", "-skw": "64", "-sks": "16", "-skn": "4", "-skm": "group", "-skst": "none",
                     "-skmu": "0", "-sksr": "0", "-sksq": "0"}


def test_results_round_trip_through_json(tmp_path: Path) -> None:
    from pysparsek.measure.results import (
        BenchOptions,
        BenchResult,
        DenseSpeed,
        Perplexity,
        Quality,
        QualityRow,
        Rate,
        Speed,
        SpeedRow,
    )

    options = BenchOptions(Path("m.gguf"), Path("t.txt"), [8], SparsekSettings(mode="group", sinks=4, stride=16))
    r = BenchResult("2026-01-01T00:00:00+00:00", "0", {"cpu": "x"}, "cpu", "pin", "sha", {"path": "m.gguf"},
                    {"path": "t.txt"}, options, None,
                    Quality(Perplexity(10.0, 0.1, [10.0]), Perplexity(10.0, 0.1, [10.0]), True,
                            [QualityRow(8, 11.0, 0.2, 10.0, 0.1, 0.01, 90.0)]),
                    Speed([DenseSpeed("tg32", 0, Rate((4.0, 4.2), (0.5, None)))],
                          [SpeedRow(options.at(8), "tg32", 0, Rate((5.0, 5.5), (0.5, None)), Rate((4.0, 4.2)))]), [])
    doc = json.loads(json.dumps(r.to_json()))
    assert doc["schema"] == results.SCHEMA
    assert doc["options"]["mode"] == "group" and doc["options"]["stride"] == 16
    row = doc["speed"]["sparse"][0]
    assert row["sinks"] == 4 and row["top_k"] == 8
    assert row["tokens_per_s"] == 5.25 and row["spread"] == 1.1 and row["dense_tokens_per_s"] == 4.1
    assert row["ratio"] == (5.0 / 4.0 + 5.5 / 4.2) / 2 and row["load_1min"] == [0.5, None]
    assert BenchResult.from_json(doc) == r


def test_quantized_cache_rows_run_dense_in_their_own_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each round: the Sparse-K batch (with dense f16), then dense with each quantized K/V cache; ratios are to
    dense f16 of the same round."""
    from pysparsek.measure import speed

    seen: list[list[str]] = []
    rate = {"f16": 10.0, "q8_0": 8.0, "q4_0": 5.0}

    def fake_run(cmd: list[str], **_: object) -> object:
        seen.append(cmd)
        ks = cmd[cmd.index("-sk") + 1].split(",")
        t = cmd[cmd.index("-ctk") + 1] if "-ctk" in cmd else "f16"
        recs = [{"n_prompt": 0, "n_gen": 4, "n_depth": 0, "avg_ts": rate[t] * (2 if k != "0" else 1),
                 "sparsek_topk": int(k), "sparsek_mode": "group", "type_k": t, "type_v": t} for k in ks]

        class Done:
            stdout = json.dumps(recs)
        return Done()

    class FakeBuild:
        def tool(self, name: str) -> Path:
            return Path("/bin") / name

    monkeypatch.setattr(speed, "run", fake_run)
    want = SparsekSettings(top_k=64, mode="group")
    gated: list[int] = []
    meas = speed.interleaved(FakeBuild(), Path("m.gguf"), [speed.DENSE, want], processes=2, n_prompt=8, n_gen=4,
                             depths=[0], cache_types=("q8_0", "q4_0"), gate=lambda: gated.append(len(seen)))
    assert len(seen) == 6
    assert gated == [0, 1, 2, 3, 4, 5]  # the idle gate before every process, the quantized caches' included
    assert [c[c.index("-ctk") + 1] if "-ctk" in c else "f16" for c in seen] == ["f16", "q8_0", "q4_0"] * 2
    assert all(c[c.index("-ctv") + 1] == c[c.index("-ctk") + 1] for c in seen if "-ctk" in c)
    assert {(m.config.top_k, m.cache_type): len(m.samples_ts) for m in meas} == {
        (0, "f16"): 2, (64, "f16"): 2, (0, "q8_0"): 2, (0, "q4_0"): 2}
    sp = speed.summarize(meas)
    assert [(d.test, d.rate.samples) for d in sp.dense] == [("tg4", (10.0, 10.0))]
    ratios = {(r.top_k, r.cache_type): r.ratio for r in sp.sparse}
    assert ratios == {(64, "f16"): 2.0, (0, "q8_0"): 0.8, (0, "q4_0"): 0.5}
    assert all(r.rate.processes == 2 for r in sp.sparse)


def _result(kl_sparse: float, kl_cache: float, tg_sparse: float, tg_cache: float) -> results.BenchResult:
    from pysparsek.measure.results import (
        BenchOptions,
        BenchResult,
        DenseSpeed,
        Perplexity,
        Quality,
        QualityRow,
        Rate,
        Speed,
        SpeedRow,
    )

    o = BenchOptions(Path("m.gguf"), Path("t.txt"), [64], SparsekSettings(mode="group"), cache_types=["q4_0"])
    dense = SparsekSettings.off()
    return BenchResult("2026-01-01T00:00:00+00:00", "0", {"cpu": "x"}, "cpu", "pin", "sha", {"path": "m.gguf"},
                       {"path": "t.txt"}, o, None,
                       Quality(Perplexity(10.0, None, []), Perplexity(10.0, None, []), True,
                               [QualityRow(64, 11.0, None, 10.0, kl_sparse, 0.01, 90.0),
                                QualityRow(0, 11.0, None, 10.0, kl_cache, 0.01, 90.0, cache_type="q4_0")],
                               regime="decode"),
                       Speed([DenseSpeed("tg32", 8192, Rate((4.0,)))],
                             [SpeedRow(o.at(64), "tg32", 8192, Rate((4.0 * tg_sparse,)), Rate((4.0,))),
                              SpeedRow(dense, "tg32", 8192, Rate((4.0 * tg_cache,)), Rate((4.0,)),
                                       cache_type="q4_0")]), [])


@pytest.mark.parametrize(("kl", "tg", "answer", "words"), [
    ((0.03, 0.06), (2.0, 0.5), "yes", ("faster", "less")),
    ((0.03, 0.01), (2.0, 0.5), "no", ("faster", "more")),
    ((0.03, 0.06), (0.4, 0.5), "no", ("slower", "less")),
])
def test_the_closing_lines_compare_each_setting_with_each_quantized_cache(kl: tuple[float, float],
                                                                          tg: tuple[float, float], answer: str,
                                                                          words: tuple[str, str]) -> None:
    from pysparsek.report import tables

    text = tables.headline(_result(kl[0], kl[1], tg[0], tg[1]))
    lines = [line for line in text.splitlines() if "K/V cache?" in line]
    assert len(lines) == 1, text
    assert lines[0].startswith("  K=64 group") and "than a q4_0 K/V cache? " + answer in lines[0]
    assert f"{words[0]} in decode ({tg[0]:.2f}× vs {tg[1]:.2f}× dense at depth 8192) at {words[1]} quality loss" \
        in lines[0]
    assert "dense, q4_0 cache: decode (tg32)" in text


def test_quality_rows_of_quantized_caches_round_trip_and_print() -> None:
    from pysparsek.report import tables

    r = _result(0.03, 0.06, 2.0, 0.5)
    doc = json.loads(json.dumps(r.to_json()))
    assert doc["quality"]["sparse"][1]["cache_type"] == "q4_0" and "cache_type" not in doc["quality"]["sparse"][0]
    assert doc["speed"]["sparse"][1]["cache_type"] == "q4_0"
    assert results.BenchResult.from_json(doc) == r
    assert "dense q4_0 cache" in tables.quality_table(r)
    assert "dense, q4_0 K/V cache" in tables.speed_table(r)


def test_quantized_caches_can_run_at_their_own_depths(monkeypatch: pytest.MonkeyPatch) -> None:
    from pysparsek.measure import speed

    seen: list[list[str]] = []

    class Done:
        stdout = "[]"

    def fake_run(cmd: list[str], **_: object) -> Done:
        seen.append(cmd)
        return Done()

    class FakeBuild:
        def tool(self, name: str) -> Path:
            return Path("/bin") / name

    monkeypatch.setattr(speed, "run", fake_run)
    speed.interleaved(FakeBuild(), Path("m.gguf"), [speed.DENSE, SparsekSettings(top_k=64)], processes=1,
                      n_prompt=8, n_gen=4, depths=[0, 8192], cache_types=("q4_0",), cache_depths=[0, 2048])
    assert [c[c.index("-d") + 1] for c in seen] == ["0,8192", "0,2048"]


def test_the_verdict_compares_at_the_deepest_depth_both_were_measured() -> None:
    import dataclasses

    from pysparsek.measure.results import Rate
    from pysparsek.report import tables

    r = _result(0.03, 0.06, 2.0, 0.5)
    deep = dataclasses.replace(r.speed.sparse[0], depth=16384, rate=Rate((12.0,)))  # ratio 3.0
    r = dataclasses.replace(r, speed=dataclasses.replace(r.speed, sparse=[*r.speed.sparse, deep]))
    line = next(x for x in tables.headline(r).splitlines() if "K/V cache?" in x)
    assert "(2.00× vs 0.50× dense at depth 8192)" in line
    # the deeper depth, where only Sparse-K ran, is named with its own ratio
    assert "compared at depth 8192, the deepest both were measured at: at depth 16384 Sparse-K decodes at 3.00×" in line
