#!/usr/bin/env python3
"""Decode-regime quality of exact vs shadow-K scoring, next to dense with a quantized KV cache (issue targets).

For each chunk of the text: `--prompt` tokens evaluated densely, then `--decode` tokens decoded one at a time under
each setting (pysparsek.decode_regime); KL to dense f16 over the decoded tokens. Writes a Markdown table and JSON.

Usage: .venv/bin/python scripts/decode_quality.py [--prompt 1024] [--decode 256] [--chunks 4] [--topk 128,256]
           [--modes head,group] [--out results/decode-quality]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main() -> int:
    from pysparsek.data import corpus, models
    from pysparsek.measure import decode_regime as dr
    from pysparsek.measure import machine
    from pysparsek.sparsek.settings import SparsekSettings

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompt", type=int, default=1024)
    ap.add_argument("--decode", type=int, default=256)
    ap.add_argument("--chunks", type=int, default=4)
    ap.add_argument("--topk", default="128,256")
    ap.add_argument("--modes", default="head,group")
    ap.add_argument("--score-types", default="none,q4_0")
    ap.add_argument("--sparq-r", default="", help="also SparQ scoring with these component counts (e.g. 8,16)")
    ap.add_argument("--sparq-shared", default="0", help="SparQ's component rules: 0 each query head's own, 1 shared "
                    "by a KV head's query heads (e.g. 0,1)")
    ap.add_argument("--cache-types", default="q8_0,q4_0", help="dense runs with these K/V cache types")
    ap.add_argument("--model")
    ap.add_argument("--text")
    ap.add_argument("--out", default="results/decode-quality")
    args = ap.parse_args()

    model = Path(args.model) if args.model else models.default_model()
    text = Path(args.text) if args.text else corpus.default_text()
    settings = [dr.Setting(SparsekSettings(top_k=int(k), mode=mode, score_type=st)) for mode in args.modes.split(",")
                for k in args.topk.split(",") for st in args.score_types.split(",")]
    settings += [dr.Setting(SparsekSettings(top_k=int(k), mode=mode, sparq_r=int(r), sparq_shared=int(sh)))
                 for mode in args.modes.split(",") for k in args.topk.split(",") for r in args.sparq_r.split(",") if r
                 for sh in args.sparq_shared.split(",") if sh and (sh == "0" or mode != "head")]
    settings += [dr.Setting(cache_type=ct) for ct in args.cache_types.split(",") if ct]
    t0 = time.time()
    results = dr.measure(model, text, settings, prompt=args.prompt, decode=args.decode, chunks=args.chunks,
                         progress=lambda s: print(f"[{time.time() - t0:6.0f} s] {s}", file=sys.stderr, flush=True))
    dense = results[0]
    head = (f"{model.name}, {text.name}: {args.chunks} chunks × ({args.prompt} dense prompt tokens + {args.decode} "
            f"decoded tokens), flash attention, machine {machine.one_line()}, {time.time() - t0:.0f} s")
    lines = [head, "", "| setting | PPL | ΔPPL % | KL to dense | top-1 % |", "|---|---:|---:|---:|---:|",
             f"| dense (f16 cache) | {dense.ppl:.4f} | | | |"]
    for r in results[1:]:
        lines.append(f"| {r.setting.label} | {r.ppl:.4f} | {100 * (r.ppl - dense.ppl) / dense.ppl:+.2f} | "
                     f"{r.kl_mean:.5f} ± {r.kl_stderr:.5f} | {r.top1_agreement_pct:.2f} |")
    exact = {(r.setting.sparsek.mode, r.setting.sparsek.top_k): r.kl_mean for r in results[1:]
             if r.setting.sparsek.top_k and r.setting.sparsek.score_type == "none" and not r.setting.sparsek.sparq_r}
    lines.append("")
    for r in results[1:]:
        key = (r.setting.sparsek.mode, r.setting.sparsek.top_k)
        approx = r.setting.sparsek.score_type != "none" or r.setting.sparsek.sparq_r
        if r.setting.sparsek.top_k and approx and key in exact and exact[key]:
            lines.append(f"- {r.setting.label}: KL {r.kl_mean / exact[key]:.3f}× exact scoring's "
                         f"({'within' if r.kl_mean <= 1.15 * exact[key] else 'NOT within'} 15 %)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps(
        {"model": str(model), "text": str(text), "prompt": args.prompt, "decode": args.decode, "chunks": args.chunks,
         "machine": machine.describe(),
         "results": [{**r.setting.sparsek.given(), "cache_type": r.setting.cache_type, "label": r.setting.label,
                      "ppl": r.ppl, "kl_mean": r.kl_mean,
                      "kl_stderr": r.kl_stderr, "top1_agreement_pct": r.top1_agreement_pct,
                      "decoded_tokens": r.n_tokens} for r in results]}, indent=2) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
