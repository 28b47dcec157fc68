#!/usr/bin/env python3
"""Long-context retrieval on SmolLM2: a pass key hidden at 10/50/90 % of ~4k- and ~8k-token filler, recalled by
greedy decoding, dense vs Sparse-K at K 64 and 256 in `head` and `group` mode with the recommended window and sinks
(pysparsek/recommended.py). Too slow for CI (an 8k prompt takes about a minute per setting on 2 cores).

Usage: .venv/bin/python scripts/passkey_long.py [--lengths 4000,8000] [--out results/passkey-long]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from pysparsek.cli.main import positive_int_list
from pysparsek.data import models
from pysparsek.measure import machine, passkey
from pysparsek.sparsek.recommended import RECOMMENDED
from pysparsek.sparsek.settings import SparsekSettings

DEPTHS = [0.1, 0.5, 0.9]


def write(rows: list[dict], args: argparse.Namespace, model: Path, window: int, sinks: int) -> str:
    """results as JSON and a markdown table; called after each mode, so an interrupted run keeps what it has."""
    lines = [f"machine: {machine.one_line()}; model {model.name}; window {window}, sinks {sinks} with every K",
             "", "| setting | " + " | ".join(f"~{n} tokens" for n in args.lengths) + " |",
             "| --- | " + " | ".join("---" for _ in args.lengths) + " |"]
    settings = [("dense", 0)] + [(m, k) for m in args.modes.split(",") for k in args.topk]
    for mode, k in settings:
        cells = []
        for n in args.lengths:
            mine = [r for r in rows if r["mode"] == mode and r["top_k"] == k and abs(r["n_tokens"] - n) < n * 0.1]
            cells.append(f"{sum(r['correct'] for r in mine)}/{len(mine)}")
        lines.append(f"| {'dense' if k == 0 else f'K={k} {mode}'} | " + " | ".join(cells) + " |")
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=positive_int_list, default=[4000, 8000])
    ap.add_argument("--topk", type=positive_int_list, default=[64, 256])
    ap.add_argument("--modes", default="head,group")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("results/passkey-long"))
    args = ap.parse_args()
    model = models.default_model()
    window, sinks = RECOMMENDED.window, RECOMMENDED.sinks
    rows: list[dict] = []
    for mode in args.modes.split(","):
        t0 = time.monotonic()
        # dense is measured once, with the first mode
        topks = ([0] if not rows else []) + args.topk
        trials = passkey.run(model, args.lengths, DEPTHS, topks, SparsekSettings(mode=mode, window=window, sinks=sinks),
                             n_threads=args.threads)
        for t in trials:
            rows.append({**dataclasses.asdict(t), "mode": mode if t.top_k else "dense",
                         "window": window if t.top_k else 0, "sinks": sinks if t.top_k else 0})
        print(f"{mode}: {len(trials)} trials in {time.monotonic() - t0:.0f} s", flush=True)
        table = write(rows, args, model, window, sinks)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
