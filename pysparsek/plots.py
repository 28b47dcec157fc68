"""PNG plots of a bench result: PPL and KL vs K; tokens/s vs depth for each K."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt


def quality(doc: dict[str, Any], path: Path) -> Path:
    q = doc["quality"]
    ks = [s["top_k"] for s in q["sparse"]]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(ks, [s["ppl"] for s in q["sparse"]], "o-", label="Sparse-K PPL")
    ax.axhline(q["stock"]["ppl"], color="gray", linestyle="--", label="dense PPL")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("K (kept scores per query row)")
    ax.set_ylabel("perplexity")
    ax2 = ax.twinx()
    ax2.plot(ks, [s["kl_mean"] for s in q["sparse"]], "s:", color="tab:red", label="KL vs dense")
    ax2.set_ylabel("mean KL divergence", color="tab:red")
    lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    labels = ax.get_legend_handles_labels()[1] + ax2.get_legend_handles_labels()[1]
    ax.legend(lines, labels, loc="upper right")
    ax.set_title(Path(doc["model"]["path"]).name)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def speed(doc: dict[str, Any], path: Path) -> Path | None:
    sp = doc["speed"]
    if not sp["dense"]:
        return None
    tests = sorted({d["test"] for d in sp["dense"]})
    fig, axes = plt.subplots(1, len(tests), figsize=(5 * len(tests), 4), squeeze=False)
    for ax, test in zip(axes[0], tests, strict=True):
        dense = sorted((d["depth"], d["tokens_per_s"]) for d in sp["dense"] if d["test"] == test)
        ax.plot(*zip(*dense, strict=True), "o--", color="gray", label="dense")
        for k in sorted({s["top_k"] for s in sp["sparse"]}):
            pts = sorted((s["depth"], s["tokens_per_s"]) for s in sp["sparse"] if s["test"] == test and s["top_k"] == k)
            ax.plot(*zip(*pts, strict=True), "o-", label=f"K={k}")
        ax.set_title(test)
        ax.set_xlabel("depth (tokens already in the KV cache)")
        ax.set_ylabel("tokens/s")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write(doc: dict[str, Any], out: Path) -> list[Path]:
    made = [quality(doc, out / "ppl_kl_vs_k.png"), speed(doc, out / "tps_vs_depth.png")]
    return [p for p in made if p is not None]
