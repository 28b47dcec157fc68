#!/usr/bin/env python3
"""Decode speed at one depth in one context: dense vs Sparse-K from K, its q8_0/q4_0 copies and SparQ (#21).

llama-bench fills the depth again for every setting and repetition, which on a shared 2-core machine takes many
minutes each. Here one context (the patched library, flash attention) is filled once, densely, to `--depth` tokens;
then every round decodes `--tokens` tokens under each setting in turn (switched through the C API: the score copy is
derived from K when it is switched on), after one untimed token, and removes them again (llama_memory_seq_rm), so
every setting decodes at the same depth from the same cache. Ratios are medians over rounds of the same-round
ratio to dense.

Usage: .venv/bin/python scripts/sparq_decode_speed.py [--depth 8192] [--topk 128] [--sparq-r 16,8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path


def main() -> int:
    from pysparsek.data import corpus, models
    from pysparsek.measure import machine
    from pysparsek.sparsek import llm
    from pysparsek.sparsek.settings import SparsekSettings

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depth", type=int, default=8192)
    ap.add_argument("--topk", type=int, default=128)
    ap.add_argument("--mode", default="group")
    ap.add_argument("--sparq-r", default="16,8")
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="results/sparq-decode-speed-d8192")
    args = ap.parse_args()

    llm.bind()
    model = models.default_model()
    base = SparsekSettings(top_k=args.topk, mode=args.mode, max_ubatch=1)
    settings = {"dense": SparsekSettings.off(),
                f"K={args.topk} {args.mode}, exact scores": base,
                f"K={args.topk} {args.mode}, q8_0 copy": base.replace(score_type="q8_0"),
                f"K={args.topk} {args.mode}, q4_0 copy": base.replace(score_type="q4_0")}
    for r in [int(r) for r in args.sparq_r.split(",") if r]:
        settings[f"K={args.topk} {args.mode}, sparq r={r}"] = base.replace(sparq_r=r)
        if args.mode != "head":
            settings[f"K={args.topk} {args.mode}, sparq r={r} shared"] = base.replace(sparq_r=r, sparq_shared=1)
    m = llm.load(model, SparsekSettings.off(), exact=True, n_ctx=args.depth + args.tokens + 16, n_batch=512,
                 n_ubatch=512, n_threads=args.threads, n_threads_batch=args.threads, flash_attn=True)
    samples: dict[str, list[float]] = {name: [] for name in settings}
    loads: list[float] = []
    t0 = time.time()
    try:
        text = corpus.default_text().read_text(encoding="utf-8", errors="replace")
        toks = m.tokenize(text.encode(), add_bos=False)[:args.depth + args.tokens + 1]
        if len(toks) < args.depth + args.tokens + 1:
            raise SystemExit(f"the text has {len(toks)} tokens")
        m.eval(toks[:args.depth])
        print(f"[{time.time() - t0:5.0f} s] filled {args.depth} cells", file=sys.stderr, flush=True)
        for rnd in range(args.rounds):
            for name, s in settings.items():
                llm.set_sparsek(m, s.resolved())
                m.eval(toks[args.depth:args.depth + 1])     # untimed: the graph for the new setting
                t = time.perf_counter()
                for tok in toks[args.depth + 1:args.depth + 1 + args.tokens]:
                    m.eval([tok])
                ts = args.tokens / (time.perf_counter() - t)
                m.n_tokens = args.depth                     # the decoded cells are removed on the next eval
                samples[name].append(ts)
                loads.append(os.getloadavg()[0])
                print(f"[{time.time() - t0:5.0f} s] round {rnd + 1}/{args.rounds} {name}: {ts:.2f} t/s",
                      file=sys.stderr, flush=True)
    finally:
        m.close()
    dense = samples["dense"]
    lines = [f"{model.name}, depth {args.depth}, {args.tokens} decoded tokens per setting and round, flash "
             f"attention, {args.threads} threads, {args.rounds} rounds, machine {machine.one_line()}, 1-min load "
             f"average during the runs {min(loads):.1f}–{max(loads):.1f}, {time.time() - t0:.0f} s. Written by "
             "scripts/sparq_decode_speed.py (one context filled once; settings switched through the C API).", "",
             "| setting | decode t/s (median) | vs dense (median of same-round ratios) | samples t/s |",
             "|---|---:|---:|---|"]
    doc = []
    for name, s in samples.items():
        ratio = statistics.median(a / b for a, b in zip(s, dense, strict=True))
        lines.append(f"| {name} | {statistics.median(s):.2f} | {ratio:.2f}× | {', '.join(f'{x:.2f}' for x in s)} |")
        doc.append({"setting": name, **settings[name].resolved().given(), "samples_ts": s, "ratio": ratio})
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"model": str(model), "depth": args.depth, "tokens": args.tokens,
                                                    "machine": machine.describe(), "load_1min": loads,
                                                    "rows": doc}, indent=2) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
