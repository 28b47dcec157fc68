"""PNG plots of a bench result: quality vs K (ΔPPL and KL, each on its own axis); speed and ratio to dense vs depth."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter

from pysparsek.measure.results import BenchResult, Rate


def quality(r: BenchResult, path: Path) -> Path:
    q = r.quality
    rows = sorted((s for s in q.sparse if s.top_k), key=lambda s: s.top_k)
    caches = [s for s in q.sparse if not s.top_k]   # dense with a quantized K/V cache: horizontal lines
    ks = [s.top_k for s in rows]
    fig, (ax_ppl, ax_kl) = plt.subplots(1, 2, figsize=(10, 4))

    ax_ppl.plot(ks, [s.delta_ppl_pct for s in rows], "o-", color="tab:blue", label="Sparse-K")
    for k, row in zip(ks, rows, strict=True):
        ax_ppl.annotate(f"{row.delta_ppl_pct:+.2f} %", (k, row.delta_ppl_pct), textcoords="offset points",
                        xytext=(4, 4), fontsize="small")
    ax_ppl.axhline(0.0, color="gray", linestyle="--", label=f"dense (PPL {q.stock.ppl:.3f})")
    for i, c in enumerate(caches):
        ax_ppl.axhline(c.delta_ppl_pct, color=f"C{i + 3}", linestyle="-.", label=f"dense, {c.cache_type} cache")
        if c.kl_mean:
            ax_kl.axhline(c.kl_mean, color=f"C{i + 3}", linestyle="-.", label=f"dense, {c.cache_type} cache")
    ax_ppl.set_yscale("symlog", linthresh=1.0)  # a few % and tens of % both readable; 0 (K >= context) stays on it
    ax_ppl.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax_ppl.set_ylabel("ΔPPL vs dense (%)")
    ax_ppl.set_title("perplexity")

    # KL is exactly 0 where K covers every row (identical to dense): a log axis cannot show it, so say so
    positive = [(k, s.kl_mean) for k, s in zip(ks, rows, strict=True) if s.kl_mean is not None and s.kl_mean > 0]
    zero = [k for k, s in zip(ks, rows, strict=True) if s.kl_mean is not None and s.kl_mean <= 0]
    if positive:
        ax_kl.plot(*zip(*positive, strict=True), "s-", color="tab:red", label="Sparse-K")
        for k, v in positive:
            ax_kl.annotate(f"{v:.4f}", (k, v), textcoords="offset points", xytext=(4, 4), fontsize="small")
        ax_kl.set_yscale("log")
    for k in zero:
        ax_kl.axvline(k, color="tab:green", linestyle=":", label=f"K={k}: KL 0 (identical to dense)")
    ax_kl.set_ylabel("mean KL divergence vs dense (nats)")
    ax_kl.set_title("KL divergence (dense = 0)")

    for ax in (ax_ppl, ax_kl):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_xlabel("K (kept scores per query row)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="upper right", fontsize="small")
    o = r.options
    fig.suptitle(f"{Path(r.model['path']).name}: ctx {o.ctx}, {o.chunks} chunks, Sparse-K {o.sparsek.details()}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _minmax(rates: list[Rate]) -> list[list[float]]:
    return [[r.median - r.low for r in rates], [r.high - r.median for r in rates]]


def speed(r: BenchResult, path: Path) -> Path | None:
    sp = r.speed
    if not sp.dense:
        return None
    tests = sorted({d.test for d in sp.dense})
    labels = list(dict.fromkeys(s.label for s in sorted(sp.sparse, key=lambda s: s.top_k)))
    fig, axes = plt.subplots(2, len(tests), figsize=(5 * len(tests), 7), squeeze=False, sharex="col")
    for col, test in enumerate(tests):
        ax_ts, ax_ratio = axes[0][col], axes[1][col]
        dense = sorted((d.depth, d.rate) for d in sp.dense if d.test == test)
        ax_ts.errorbar([d for d, _ in dense], [r.median for _, r in dense], yerr=_minmax([r for _, r in dense]),
                       fmt="o--", color="gray", capsize=3, label="dense")
        ax_ratio.axhline(1.0, color="gray", linestyle="--", label="dense")
        for label in labels:
            rows = sorted((s for s in sp.sparse if s.test == test and s.label == label), key=lambda s: s.depth)
            pts = [(s.depth, s.tokens_per_s, s.ratio, s.ratio_min, s.ratio_max) for s in rows]
            depths = [p[0] for p in pts]
            ax_ts.errorbar(depths, [p[1] for p in pts], yerr=_minmax([s.rate for s in rows]), fmt="o-", capsize=3,
                           label=label)
            ratio = [p[2] for p in pts]
            err = [[p[2] - p[3] for p in pts], [p[4] - p[2] for p in pts]]
            ax_ratio.errorbar(depths, ratio, yerr=err, fmt="o-", capsize=3, label=label)
            for d, v in zip(depths, ratio, strict=True):
                ax_ratio.annotate(f"{v:.2f}×", (d, v), textcoords="offset points", xytext=(4, 4), fontsize="small")
        ax_ts.set_title(f"{test}: tokens/s (median over processes; bars: min-max)")
        ax_ts.set_ylabel("tokens/s")
        ax_ratio.set_title(f"{test}: ratio to dense (median; bars: min-max)")
        ax_ratio.set_ylabel("ratio to dense")
        ax_ratio.set_xlabel("depth (tokens already in the KV cache)")
        for ax in (ax_ts, ax_ratio):
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write(r: BenchResult, out: Path) -> list[Path]:
    made = [quality(r, out / "ppl_kl_vs_k.png"), speed(r, out / "tps_vs_depth.png")]
    return [p for p in made if p is not None]
