#!/usr/bin/env python3
"""Decode speed at one depth on this CPU: dense vs Sparse-K scored from the q4_0 copy of K vs SparQ (issue #21).

One llama-bench process per setting and round (tg only, `--reps` each), the settings interleaved within a round so
load drifts hit them alike; ratios are medians over rounds of the same-round ratio to dense. All Sparse-K settings
use the decode-only policy (max_ubatch 1): the depth is filled densely, as a prompt would be.

Usage: .venv/bin/python scripts/sparq_speed.py [--depth 8192] [--topk 128] [--sparq-r 8,16] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path


def main() -> int:
    import os

    from pysparsek.data import models
    from pysparsek.llamacpp import build
    from pysparsek.measure import machine, speed
    from pysparsek.sparsek.settings import SparsekSettings

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depth", type=int, default=8192)
    ap.add_argument("--topk", type=int, default=128)
    ap.add_argument("--mode", default="group")
    ap.add_argument("--sparq-r", default="8,16")
    ap.add_argument("--n-gen", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--model")
    ap.add_argument("--out", default="results/sparq-speed")
    args = ap.parse_args()

    patched = build.require("patched")
    model = Path(args.model) if args.model else models.default_model()
    base = SparsekSettings(top_k=args.topk, mode=args.mode, max_ubatch=1)
    settings = {"dense": SparsekSettings.off(),
                f"K={args.topk} {args.mode}, exact scores": base,
                f"K={args.topk} {args.mode}, q4_0 copy": base.replace(score_type="q4_0")}
    for r in [int(r) for r in args.sparq_r.split(",") if r]:
        settings[f"K={args.topk} {args.mode}, sparq r={r}"] = base.replace(sparq_r=r)
    common = {"n_prompt": 0, "n_gen": args.n_gen, "depths": [args.depth], "reps": args.reps,
              "threads": args.threads, "flash_attn": True, "ngl": 0}
    samples: dict[str, list[float]] = {name: [] for name in settings}
    loads: list[float] = []
    t0 = time.time()
    for rnd in range(args.rounds):
        for name, s in settings.items():
            print(f"[{time.time() - t0:5.0f} s] round {rnd + 1}/{args.rounds}: {name}", file=sys.stderr, flush=True)
            recs = speed.bench_once(patched, model, [s], **common)
            got = SparsekSettings.from_bench_record(recs[0])
            if got != s.resolved():
                raise SystemExit(f"llama-bench ran {got}, not {s.resolved()}")
            samples[name].append(statistics.median(float(r["avg_ts"]) for r in recs))
            loads.append(os.getloadavg()[0])
    dense = samples["dense"]
    lines = [f"{model.name}, depth {args.depth}, tg{args.n_gen}, flash attention, {args.rounds} rounds × "
             f"{args.reps} reps, machine {machine.one_line()}, 1-min load average during the runs "
             f"{min(loads):.1f}–{max(loads):.1f}, {time.time() - t0:.0f} s. Written by scripts/sparq_speed.py.", "",
             f"| setting | tg{args.n_gen} t/s (median) | vs dense (median of same-round ratios) | samples t/s |",
             "|---|---:|---:|---|"]
    doc = []
    for name, s in samples.items():
        ratio = statistics.median(a / b for a, b in zip(s, dense, strict=True))
        lines.append(f"| {name} | {statistics.median(s):.2f} | {ratio:.2f}× | {', '.join(f'{x:.2f}' for x in s)} |")
        doc.append({"setting": name, **settings[name].resolved().given(), "samples_ts": s, "dense_samples_ts": dense,
                    "ratio": ratio})
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"model": str(model), "depth": args.depth, "n_gen": args.n_gen,
                                                    "machine": machine.describe(), "load_1min": loads,
                                                    "rows": doc}, indent=2) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
