#!/usr/bin/env python3
"""The demo's speed configuration at one depth from llama-bench JSON files: dense vs the recommended deployment.

Each file is one llama-bench process run as

    llama-bench -m MODEL -o json -r 1 -p 512 -n 32 -d 8192 -fa 1 -t 2 -sk 0,64,256 -skw 64 -sks 0 -skn 4 -skm group \\
        -skst none,q4_0 -skmu 1          (the second process with -sk 256,64,0 -skst q4_0,none, against drift)

The sweep's unwanted combinations (dense with a score copy, K without one) are dropped; a ratio is Sparse-K t/s over
dense t/s of the same process, the median over processes, with the min-max spread.

Usage: .venv/bin/python scripts/demo_speed_table.py RUN1.json [RUN2.json ...]
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def runs(path: Path) -> dict[tuple[int, str, int], float]:
    out = {}
    for r in json.loads(path.read_text()):
        k, score = int(r["sparsek_topk"]), r["sparsek_score_type"]
        if (k == 0) != (score == "none"):
            continue
        test = f"pp{r['n_prompt']}" if r["n_prompt"] else f"tg{r['n_gen']}"
        out[(k, test, int(r["n_depth"]))] = float(r["avg_ts"])
    return out


def main(paths: list[str]) -> int:
    per_run = [runs(Path(p)) for p in paths]
    keys = sorted(per_run[0], key=lambda key: (key[0], key[1] != "tg32", key[2]))
    print(f"{'setting':<40} {'test':>6} {'depth':>6} {'t/s':>16} {'vs dense':>16}")
    for k, test, depth in keys:
        ts = [r[(k, test, depth)] for r in per_run]
        ratio = [r[(k, test, depth)] / r[(0, test, depth)] for r in per_run]
        label = "dense" if k == 0 else f"K={k} group w=64 sinks=4 q4_0 ub<=1"
        spread = f"{statistics.median(ratio):.2f}× ({min(ratio):.2f}-{max(ratio):.2f})"
        print(f"{label:<40} {test:>6} {depth:>6} {' / '.join(f'{t:.1f}' for t in ts):>16} {spread:>16}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
