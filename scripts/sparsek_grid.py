#!/usr/bin/env python3
"""Which window and sinks to recommend: SmolLM2 perplexity and KL vs dense over a grid of Sparse-K settings.

Stage 1 (--stage grid): ctx 2048, flash attention, K x window x sinks x mode, each against one stock run.
Stage 2 (--stage confirm): the best settings of stage 1 (lowest KL per K and mode) with soft_max at ctx 2048
(K 256, 512), and with flash attention at ctx 8192, the model's context (K 512). Every run is appended to a
JSON-lines file as it finishes, so an interrupted run resumes where it stopped; every stage (and --stage plot)
writes a markdown table and a plot of PPL and KL against the kept fraction next to it.

Usage: .venv/bin/python scripts/sparsek_grid.py --stage grid|confirm|plot [--out results/sparsek-grid.jsonl]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from pysparsek.data import corpus, models
from pysparsek.llamacpp import build as builds
from pysparsek.measure import machine, perplexity
from pysparsek.measure.perplexity import Settings

TOPKS = [64, 128, 256, 512]
WINDOWS = [0, 16, 64]
SINKS = [0, 4]
MODES = ["head", "group"]


def key(r: dict) -> tuple:
    return (r["ctx"], r["chunks"], r["fa"], r["mode"], r["top_k"], r["window"], r["sinks"])


def load(out: Path) -> list[dict]:
    return [json.loads(line) for line in out.read_text().splitlines() if line.strip()] if out.is_file() else []


def run_configs(out: Path, ctx: int, chunks: int, fa: str, configs: list[tuple[str, int, int, int]],
                threads: int | None) -> None:
    done = {key(r) for r in load(out)}
    todo = [c for c in configs if (ctx, chunks, fa, *c) not in done]
    if not todo:
        return
    model, text = models.default_model(), corpus.default_text()
    base = Settings(ctx=ctx, chunks=chunks, threads=threads, flash_attn=fa)
    with tempfile.TemporaryDirectory(prefix="pysparsek-grid-") as tmp:
        kld = Path(tmp) / "stock.kld"
        t0 = time.monotonic()
        dense = perplexity.measure(builds.require("stock"), model, text, base.without_sparsek(), save_logits=kld)
        print(f"ctx {ctx} x {chunks}, fa {fa}: dense PPL {dense.ppl:.4f} ({time.monotonic() - t0:.0f} s)", flush=True)
        patched = builds.require("patched")
        for mode, k, window, sinks in todo:
            t0 = time.monotonic()
            res = perplexity.measure(patched, model, text, base.with_sparsek(
                top_k=k, window=window, sinks=sinks, mode=mode), kld_base=kld)
            row = {"ctx": ctx, "chunks": chunks, "fa": fa, "mode": mode, "top_k": k, "window": window, "sinks": sinks,
                   "ppl": res.ppl, "ppl_stderr": float(res.final_stderr), "dense_ppl": dense.ppl,
                   "delta_ppl_pct": 100.0 * (res.ppl - dense.ppl) / dense.ppl, "kl": res.kld_mean,
                   "kl_stderr": res.kld_stderr, "top1_pct": res.same_top_pct,
                   "kept_fraction": min(1.0, (k + window + sinks) / ctx), "seconds": round(time.monotonic() - t0, 1),
                   "machine": machine.one_line()}
            with out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"  {mode:5} K={k:<4} w={window:<3} s={sinks}: PPL {res.ppl:.4f} ({row['delta_ppl_pct']:+.2f} %), "
                  f"KL {res.kld_mean:.4f}, top-1 {res.same_top_pct:.2f} % ({row['seconds']:.0f} s)", flush=True)


def best(rows: list[dict], ctx: int = 2048, fa: str = "on") -> dict[tuple[str, int], dict]:
    """Lowest KL per (mode, K) among the grid's window/sinks at ctx, fa."""
    out: dict[tuple[str, int], dict] = {}
    for r in rows:
        if (r["ctx"], r["fa"]) != (ctx, fa):
            continue
        k = (r["mode"], r["top_k"])
        if k not in out or r["kl"] < out[k]["kl"]:
            out[k] = r
    return out


def table(rows: list[dict]) -> str:
    lines = ["| ctx | attention | mode | K | window | sinks | kept ≤ | PPL | ΔPPL % | KL | top-1 % |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in sorted(rows, key=lambda r: (r["ctx"], r["fa"], r["mode"], r["top_k"], r["window"], r["sinks"])):
        lines.append(f"| {r['ctx']} | {'flash' if r['fa'] == 'on' else 'soft_max'} | {r['mode']} | {r['top_k']} | "
                     f"{r['window']} | {r['sinks']} | {100 * r['kept_fraction']:.1f} % | {r['ppl']:.4f} | "
                     f"{r['delta_ppl_pct']:+.2f} | {r['kl']:.4f} | {r['top1_pct']:.2f} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    fig, (ax_p, ax_k) = plt.subplots(1, 2, figsize=(11, 4.5))
    markers = {(0, 0): "o", (16, 0): "s", (64, 0): "^", (0, 4): "D", (16, 4): "v", (64, 4): "P"}
    colors = {"head": "tab:blue", "group": "tab:orange"}
    grid = [r for r in rows if (r["ctx"], r["fa"]) == (2048, "on")]
    for (w, s), m in markers.items():
        for mode, c in colors.items():
            pts = sorted((r["kept_fraction"], r["delta_ppl_pct"], r["kl"]) for r in grid
                         if (r["window"], r["sinks"], r["mode"]) == (w, s, mode))
            if not pts:
                continue
            x = [100 * p[0] for p in pts]
            ax_p.plot(x, [p[1] for p in pts], marker=m, color=c, alpha=0.8, label=f"{mode} w={w} s={s}")
            ax_k.plot(x, [p[2] for p in pts], marker=m, color=c, alpha=0.8, label=f"{mode} w={w} s={s}")
    ax_p.axhline(2.0, color="gray", linestyle=":", label="target +2 %")
    ax_k.axhline(0.02, color="gray", linestyle=":", label="target KL 0.02")
    ax_p.axhline(0.0, color="black", linewidth=0.8, label="dense")
    for ax, label in ((ax_p, "ΔPPL vs dense (%)"), (ax_k, "KL divergence vs dense")):
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if v in (3, 5, 20) else ""))
        ax.set_yscale("log" if ax is ax_k else "symlog", **({} if ax is ax_k else {"linthresh": 1.0}))
        ax.set_xlabel("kept cells per row, at most (K + window + sinks) / ctx, %")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    ax_p.legend(handles=ax_p.get_lines()[-2:], fontsize="x-small", loc="upper right")
    ax_k.legend(fontsize="x-small", ncol=2)
    dense = grid[0]["dense_ppl"] if grid else float("nan")
    fig.suptitle(f"SmolLM2-135M Q4_1, Jargon File, ctx 2048 x 2 chunks, flash attention (dense PPL {dense:.4f})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", choices=["grid", "confirm", "plot"], required=True)
    ap.add_argument("--out", type=Path, default=Path("results/sparsek-grid.jsonl"))
    ap.add_argument("-t", "--threads", type=int)
    ap.add_argument("--confirm-topks", default="256,512", help="K values re-run with soft_max in stage 2 "
                    "(default 256,512)")
    ap.add_argument("--confirm-8k-topks", default="512", help="K values re-run at ctx 8192 in stage 2 (default 512)")
    args = ap.parse_args()
    if args.stage == "grid":
        configs = [(m, k, w, s) for m in MODES for k in TOPKS for w in WINDOWS for s in SINKS]
        run_configs(args.out, 2048, 2, "on", configs, args.threads)
    elif args.stage == "confirm":
        chosen = best(load(args.out))

        def configs(topks: str) -> list[tuple[str, int, int, int]]:
            return [(r["mode"], r["top_k"], r["window"], r["sinks"]) for (_, k), r in chosen.items()
                    if str(k) in topks.split(",")]

        run_configs(args.out, 2048, 2, "off", configs(args.confirm_topks), args.threads)
        run_configs(args.out, 8192, 1, "on", configs(args.confirm_8k_topks), args.threads)
    rows = load(args.out)
    if not rows:
        print("no results yet", file=sys.stderr)
        return 1
    plot(rows, args.out.with_suffix(".png"))
    args.out.with_suffix(".md").write_text(table(rows) + "\n")
    print(f"wrote {args.out.with_suffix('.md')} and {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
