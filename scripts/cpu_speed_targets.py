#!/usr/bin/env python3
"""Decode and prompt speed at depth 8192 on this CPU: dense vs Sparse-K (exact and q4_0-copy scoring, decode-only
policy) vs dense with a quantized KV cache, all from llama-bench -o json, interleaved over rounds; ratios are
medians of same-round ratios to dense (f16 cache).

Usage: .venv/bin/python scripts/cpu_speed_targets.py [--depth 8192] [--topk 128,256] [--mode group] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path


def main() -> int:
    from pysparsek.data import models
    from pysparsek.llamacpp import build
    from pysparsek.measure import machine, speed
    from pysparsek.sparsek.settings import SparsekSettings

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depth", type=int, default=8192)
    ap.add_argument("--topk", default="128,256")
    ap.add_argument("--mode", default="group")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--model")
    ap.add_argument("--no-caches", action="store_true", help="skip the dense runs with q8_0/q4_0 K/V caches (slow)")
    ap.add_argument("--out", default="results/cpu-speed-targets")
    args = ap.parse_args()

    patched = build.require("patched")
    model = Path(args.model) if args.model else models.default_model()
    ks = [int(k) for k in args.topk.split(",")]
    common = {"n_prompt": 512, "n_gen": 32, "depths": [args.depth], "reps": args.reps, "threads": args.threads,
              "flash_attn": True, "ngl": 0}
    # (label, llama-bench arguments): Sparse-K with the decode-only policy (max_ubatch 1), so pp512 is the
    # policy's prompt speed; dense with q8_0 / q4_0 K and V caches, what a user would pick instead
    sparse = [SparsekSettings(top_k=k, mode=args.mode, score_type=st, max_ubatch=1) for k in [0, *ks]
              for st in ("none", "q4_0")]
    dense = [SparsekSettings(top_k=0, mode=args.mode)]
    runs = [("sparse", {"settings": sparse}),
            ("cache q8_0", {"settings": dense, "extra": ("-ctk", "q8_0", "-ctv", "q8_0")}),
            ("cache q4_0", {"settings": dense, "extra": ("-ctk", "q4_0", "-ctv", "q4_0")})]
    if args.no_caches:
        runs = runs[:1]
    samples: dict[tuple[str, str], list[float]] = {}
    t0 = time.time()
    for r in range(args.rounds):
        for label, kw in runs:
            print(f"[{time.time() - t0:5.0f} s] round {r + 1}/{args.rounds}: {label}", file=sys.stderr, flush=True)
            for rec in speed.bench_once(patched, model, **common, **kw):
                topk, st = int(rec["sparsek_topk"]), rec["sparsek_score_type"]
                if topk == 0 and st != "none":
                    continue  # the sweep's dense-with-a-copy combination
                name = (f"K={topk} {args.mode} {'exact' if st == 'none' else st + ' copy'}, decode-only" if topk
                        else "dense" if label == "sparse" else f"dense, {label}")
                samples.setdefault((name, speed.test_name(rec)), []).append(float(rec["avg_ts"]))
    names = list(dict.fromkeys(n for n, _ in samples))
    tests = sorted({t for _, t in samples}, reverse=True)
    lines = [f"{model.name}, depth {args.depth}, flash attention, {args.rounds} rounds × {args.reps} reps, "
             f"machine {machine.one_line()}, {time.time() - t0:.0f} s", "",
             "| setting | " + " | ".join(f"{t} t/s | {t} vs dense" for t in tests) + " |",
             "|---|" + "---:|---:|" * len(tests)]
    doc = []
    for n in names:
        cells = []
        for t in tests:
            s, d = samples.get((n, t), []), samples[("dense", t)]
            ratio = statistics.median(a / b for a, b in zip(s, d, strict=True)) if s else float("nan")
            cells.append(f"{statistics.median(s):.2f} | {ratio:.2f}×" if s else " | ")
            doc.append({"setting": n, "test": t, "samples_ts": s, "dense_samples_ts": d, "ratio": ratio})
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"model": str(model), "depth": args.depth,
                                                    "machine": machine.describe(), "rows": doc}, indent=2) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
