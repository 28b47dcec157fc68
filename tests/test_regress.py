"""The regression guard's logic: bands, relationships, identity, baseline bookkeeping (no builds needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pysparsek.measure import compare, regress
from pysparsek.measure.perplexity import PerplexityResult


def _ppl(value: float, kl: float | None = None, top1: float | None = None, final: str | None = None):
    return PerplexityResult(chunks=[f"{value:.4f}"], final=final or f"{value:.4f}", final_stderr="0.1", output="",
                            kld_mean=kl, same_top_pct=top1)


def _comparison(dense: float, sparse: dict[int, float], identical: bool = True, exact_same: bool = True):
    rows = [compare.SparseRow(k, _ppl(v, kl=0.01, top1=95.0)) for k, v in sparse.items()]
    rows.append(compare.SparseRow(512, _ppl(dense), identical_to_stock=exact_same))
    return compare.Comparison(_ppl(dense), _ppl(dense if identical else dense + 0.01), identical, rows)


def _failed(checks: list[regress.Check]) -> list[str]:
    return [c.name for c in checks if not c.ok]


def test_healthy_results_pass() -> None:
    res = _comparison(20.0, {32: 21.0, 64: 20.5, 128: 20.2, 256: 20.05})
    assert _failed(regress.perplexity_checks("ctx512/fa-off", res)) == []


def test_sparse_better_than_dense_fails() -> None:
    res = _comparison(20.0, {32: 21.0, 64: 19.5})
    assert _failed(regress.perplexity_checks("t", res)) == ["relation/t/k64-not-below-dense"]


def test_ppl_rising_with_k_fails() -> None:
    # what keeping the K *lowest* scores looks like: more kept cells, worse
    res = _comparison(20.0, {32: 21.0, 64: 22.0, 128: 22.5})
    assert _failed(regress.perplexity_checks("t", res)) == ["relation/t/k64-not-above-k32",
                                                            "relation/t/k128-not-above-k64"]


def test_noise_is_tolerated() -> None:
    res = _comparison(20.0, {32: 19.95, 64: 20.04})  # -0.25% and +0.45%
    assert _failed(regress.perplexity_checks("t", res)) == []


def test_identity_failures_are_named() -> None:
    res = _comparison(20.0, {32: 21.0}, identical=False, exact_same=False)
    assert _failed(regress.perplexity_checks("t", res)) == ["identity/t/stock-vs-sparsek-off",
                                                            "identity/t/k512-equals-dense"]


def test_baseline_bands() -> None:
    baseline = {"values": {
        "ppl/a/k32": {"value": 20.0, "tolerance": {"rel": 0.005}},
        "kl/a/k32": {"value": 0.005, "tolerance": {"rel": 0.1, "abs": 0.002}},
        "top1/a/k32": {"value": 90.0, "tolerance": {"abs": 1.0}},
        "passkey/k64": {"value": 1.0, "tolerance": {"abs": 0.34}},
        "ppl/gone": {"value": 1.0, "tolerance": {"rel": 0.1}},
    }}
    values = {"ppl/a/k32": 20.09, "kl/a/k32": 0.0065, "top1/a/k32": 88.5, "passkey/k64": 0.67, "ppl/new": 3.0}
    checks = {c.name: c for c in regress.compare_baseline(values, baseline)}
    assert checks["ppl/a/k32"].ok           # +0.45%
    assert checks["kl/a/k32"].ok            # +30% but within 0.002 absolute
    assert not checks["top1/a/k32"].ok      # -1.5 points
    assert checks["passkey/k64"].ok         # one miss out of three
    assert not checks["ppl/new"].ok and "no baseline" in checks["ppl/new"].note
    assert not checks["ppl/gone"].ok and "not measured" in checks["ppl/gone"].note


def test_update_keeps_tolerances(tmp_path: Path) -> None:
    model, text = tmp_path / "m.gguf", tmp_path / "t.txt"
    model.write_bytes(b"GGUF")
    text.write_text("x")
    old = {"values": {"ppl/a/k32": {"value": 20.0, "tolerance": {"rel": 0.02}}}}
    new = regress.new_baseline({"ppl/a/k32": 21.0, "kl/a/k32": 0.1}, old, model, text)
    assert new["values"]["ppl/a/k32"] == {"value": 21.0, "tolerance": {"rel": 0.02}}
    assert new["values"]["kl/a/k32"]["tolerance"] == regress.DEFAULT_TOL["kl"]
    assert new["schema"] == regress.SCHEMA


def test_diff_table_names_failures() -> None:
    checks = [regress.Check("ppl/a/k32", 21.0, 20.0, "±0.5%", False, "left its band")]
    assert "FAIL left its band" in regress.table(checks)


def test_the_default_parts_leave_out_only_the_long_softmax_values() -> None:
    """`make test` (CI) runs the default parts: the committed baseline's values of ctx 2048 soft_max are not
    failures there, every other value still is when it goes unmeasured; --parts softmax-2048 measures them."""
    import json

    from pysparsek import paths
    from pysparsek.cli.main import build_parser

    assert tuple(build_parser().parse_args(["regress"]).parts.split(",")) == regress.DEFAULT_PARTS
    assert set(regress.DEFAULT_PARTS) < set(regress.PARTS)
    names = json.loads((paths.PROJECT_ROOT / "tests" / "baselines" / "smollm2.json").read_text())["values"]
    parts = {name: regress.part_of(name) for name in names}
    assert set(parts.values()) == set(regress.PARTS)
    assert {n for n, p in parts.items() if p == "softmax-2048"} == {n for n in names if "/ctx2048/fa-off/" in n}
    unmeasured = [regress.Check(n, float("nan"), 1.0, "-", False, "not measured any more") for n in names]
    kept = regress.without_unrun_parts(unmeasured, regress.DEFAULT_PARTS, quick=False)
    assert {c.name for c in kept} == {n for n, p in parts.items() if p != "softmax-2048"}
    assert regress.without_unrun_parts(unmeasured, regress.DEFAULT_PARTS, quick=True) == []
    assert len(regress.without_unrun_parts(unmeasured, regress.PARTS, quick=False)) == len(names)


def test_concurrency_fits_the_cores() -> None:
    """Two single-threaded runs at a time on two cores; a thread count asked for is kept, with as many runs as fit."""
    assert regress.concurrency(None, cores=2) == (2, 1)
    assert regress.concurrency(None, cores=1) == (1, 1)
    assert regress.concurrency(None, cores=16) == (2, 8)
    assert regress.concurrency(2, cores=2) == (1, 2)
    assert regress.concurrency(4, cores=16) == (4, 4)
    assert regress.concurrency(8, cores=2) == (1, 8)


@pytest.mark.parametrize("threads", [2, None])
def test_the_modes_compare_with_the_perplexity_parts_stock_run(monkeypatch, tmp_path: Path,
                                                               threads: int | None) -> None:
    """One stock run at ctx 2048 with flash attention serves the perplexity part and the modes: its logits file is
    kept for the modes' KL (same command), and the modes start no stock run of their own unless run alone. The
    same with runs side by side (threads None: two at a time on two cores): a KL run starts only once stock's
    logits are written."""
    from pysparsek.llamacpp import build as builds
    from pysparsek.measure import perplexity

    runs: list[tuple[str, int, str, str | None, str | None]] = []

    def fake_measure(build, model, text, s, *, save_logits=None, kld_base=None, env=None):
        mode = s.sparsek.mode if s.sparsek.top_k else None
        runs.append((build.flavor, s.ctx, s.flash_attn, mode, str(kld_base) if kld_base else None))
        if save_logits is not None:
            Path(save_logits).write_bytes(f"logits {build.flavor} {s.ctx} {s.flash_attn} {s.sparsek.top_k}".encode())
        if kld_base is not None:
            assert Path(kld_base).read_bytes().startswith(f"logits stock {s.ctx} {s.flash_attn}".encode())
        return _ppl(20.0 if not s.sparsek.top_k or s.sparsek.top_k >= s.ctx else 21.0, kl=0.01, top1=95.0)

    monkeypatch.setattr(perplexity, "measure", fake_measure)
    monkeypatch.setattr(builds, "require", lambda flavor, backend="cpu", tools=None: builds.get(flavor, backend))
    monkeypatch.setattr(regress.os, "cpu_count", lambda: 2)
    values, _ = regress.measure(tmp_path / "m.gguf", tmp_path / "t.txt", threads, False, lambda _: None,
                                ("perplexity", "modes"))
    stock = [r for r in runs if r[0] == "stock"]
    assert [(c, fa) for _, c, fa, _, _ in stock] == [(512, "off"), (512, "on"), (2048, "on")]
    modes = [r for r in runs if r[3] in regress.MODES]
    assert len(modes) == len(regress.MODES) * len(regress.MODE_TOPKS) and all(r[4] for r in modes)
    assert "ppl/ctx2048/fa-on/group/k64" in values and not any("/ctx2048/fa-off/" in n for n in values)

    runs.clear()
    regress.measure(tmp_path / "m.gguf", tmp_path / "t.txt", threads, False, lambda _: None, ("modes",))
    assert [(r[0], r[1], r[2]) for r in runs if r[0] == "stock"] == [("stock", 2048, "on")]
