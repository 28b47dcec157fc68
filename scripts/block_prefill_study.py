#!/usr/bin/env python3
"""Issue #22, step one: how well block-sparse prompts (numpy_llama.block_keep) keep a real model's output, before any
kernel exists. An independent NumPy forward of the model (tests/numpy_llama.py) over chunks of the text, every
position's logits compared with the dense forward's (the prompt regime: llama-perplexity's), for the adaptive block
rule (pooled or sampled estimate, several gamma), the static A-shape (sinks + local blocks) and today's per-row
Sparse-K, with the share of causal cells each keeps (what attention could skip).

Usage: .venv/bin/python scripts/block_prefill_study.py [--ctx 2048] [--chunks 2] [--block 64]
           [--gammas 0.8,0.9,0.95] [--local 2,4] [--topk 256] [--out results/block-prefill-study]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def main() -> int:
    from pysparsek.data import corpus, models
    from pysparsek.measure import machine
    from pysparsek.sparsek import llm

    import numpy_llama

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--chunks", type=int, default=2)
    ap.add_argument("--block", type=int, default=64)
    ap.add_argument("--gammas", default="0.8,0.9,0.95")
    ap.add_argument("--estimates", default="pooled,sampled")
    ap.add_argument("--local", default="2,4", help="local blocks of the static A-shape rows")
    ap.add_argument("--topk", default="256", help="today's per-row Sparse-K (group) for comparison; empty: none")
    ap.add_argument("--model")
    ap.add_argument("--out", default="results/block-prefill-study")
    a = ap.parse_args()

    model = Path(a.model) if a.model else models.default_model()
    w = numpy_llama.load(model)
    text = corpus.default_text().read_text(encoding="utf-8")
    m = llm.load(model, n_ctx=512, n_threads=2, exact=True)
    try:
        tokens = m.tokenize(text[: a.ctx * a.chunks * 8].encode(), add_bos=False)
    finally:
        m.close()
    if len(tokens) < a.ctx * a.chunks:
        raise SystemExit(f"the text gives {len(tokens)} tokens, fewer than {a.ctx} x {a.chunks}")

    configs: list[tuple[str, dict]] = []
    for est in a.estimates.split(","):
        for g in a.gammas.split(","):
            configs.append((f"block {a.block}, {est}, gamma {g}",
                            {"blocks": {"block": a.block, "gamma": float(g), "estimate": est}}))
    for loc in a.local.split(","):
        configs.append((f"A-shape: 1 sink block + {loc} local blocks of {a.block}",
                        {"blocks": {"block": a.block, "gamma": 0.0, "estimate": "none", "local": int(loc)}}))
    for k in [int(x) for x in a.topk.split(",") if x]:
        configs.append((f"per-row Sparse-K K={k} group (today)", {"top_k": k, "mode": "group"}))

    t0 = time.time()
    rows = {label: {"kl": [], "top1": [], "kept": []} for label, _ in configs}
    for c in range(a.chunks):
        chunk = tokens[c * a.ctx:(c + 1) * a.ctx]
        dense = numpy_llama.logits(w, chunk)
        for label, kw in configs:
            kept: list[float] = []
            out = numpy_llama.logits(w, chunk, kept=kept, **kw)
            rows[label]["kl"].append(numpy_llama.kl(dense, out))
            rows[label]["top1"].append(float(np.mean(dense.argmax(-1) == out.argmax(-1))))
            rows[label]["kept"].append(float(np.mean(kept)))
            print(f"[{time.time() - t0:6.0f} s] chunk {c + 1}/{a.chunks} {label}: KL {rows[label]['kl'][-1]:.5f}, "
                  f"kept {rows[label]['kept'][-1]:.3f}", file=sys.stderr, flush=True)

    head = (f"{model.name}, {corpus.default_text().name}: {a.chunks} chunks of {a.ctx} tokens, NumPy forward, "
            f"every position's logits vs the dense forward's (prompt regime); kept = share of the causal cells "
            f"attention keeps, mean over layers; machine {machine.one_line()}, {time.time() - t0:.0f} s")
    lines = [head, "", "| rule | kept cells | KL to dense | top-1 agreement % |", "|---|---:|---:|---:|"]
    for label, _ in configs:
        r = rows[label]
        lines.append(f"| {label} | {np.mean(r['kept']):.3f} | {np.mean(r['kl']):.5f} | "
                     f"{100 * np.mean(r['top1']):.2f} |")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"model": model.name, "ctx": a.ctx, "chunks": a.chunks,
                                                    "block": a.block, "rows": rows}, indent=1))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
