"""Decode-regime KL of SparQ selection and of SparQ's mean-value reallocation, from the independent NumPy Llama.

The question it answers before anything is built (issue #21, point 2): does mean-value reallocation,
out = a attn(kept) + (1 - a) mean(V), lower the KL to dense in the decode regime on this project's model? Each chunk
of the text is one NumPy forward of prompt + decode tokens in which the first `prompt` rows attend densely and the
decoded rows under the setting (causal attention makes that equal to decoding the tokens one at a time), compared
with the dense forward: mean KL(dense || setting) over the decoded rows, and top-1 agreement.

    .venv/bin/python scripts/sparq_numpy_decode.py --prompt 1024 --decode 256 --chunks 2 --out results/x.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from pysparsek.data import corpus, models
from pysparsek.llamacpp import build as builds
from pysparsek.sparsek import llm

import numpy_llama


def tokens_of_text(model: Path, n_tokens: int) -> list[int]:
    """The default text's tokens, by the stock library's tokenizer (the vocabulary only)."""
    llama_cpp = llm.bind(builds.require("stock").lib_dir)
    m = llama_cpp.Llama(str(model), vocab_only=True, verbose=False)
    try:
        text = corpus.default_text().read_text(encoding="utf-8", errors="replace")
        return m.tokenize(text.encode(), add_bos=False)[:n_tokens]
    finally:
        m.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompt", type=int, default=1024)
    ap.add_argument("--decode", type=int, default=256)
    ap.add_argument("--chunks", type=int, default=2)
    ap.add_argument("--topk", default="128,256")
    ap.add_argument("--r", default="8,16")
    ap.add_argument("--mode", default="group", choices=("head", "group", "token"))
    ap.add_argument("--shared", action="store_true",
                    help="also SparQ with sparq_shared: a KV head's query heads share r components (group/token)")
    ap.add_argument("--no-mean-v", action="store_true", help="leave out the mean-value reallocation settings")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    model = models.default_model()
    w = numpy_llama.load(model)
    size = args.prompt + args.decode
    toks = tokens_of_text(model, size * args.chunks)
    if len(toks) < size * args.chunks:
        raise SystemExit(f"the text has {len(toks)} tokens, {size * args.chunks} needed")
    ks = [int(k) for k in args.topk.split(",")]
    rs = [int(r) for r in args.r.split(",")]
    settings: list[dict] = []
    for k in ks:
        settings.append({"top_k": k, "mode": args.mode})
        if not args.no_mean_v:
            settings.append({"top_k": k, "mode": args.mode, "mean_v": True})
        for r in rs:
            settings.append({"top_k": k, "mode": args.mode, "sparq_r": r})
            if args.shared:
                settings.append({"top_k": k, "mode": args.mode, "sparq_r": r, "sparq_shared": 1})
            if not args.no_mean_v:
                settings.append({"top_k": k, "mode": args.mode, "sparq_r": r, "mean_v": True})
    kl: dict[int, list[np.ndarray]] = {i: [] for i in range(len(settings))}
    agree: dict[int, list[np.ndarray]] = {i: [] for i in range(len(settings))}
    t0 = time.time()
    for c in range(args.chunks):
        chunk = toks[c * size:(c + 1) * size]
        rows = slice(args.prompt, size)
        dense = numpy_llama.log_softmax(numpy_llama.logits(w, chunk)[rows])
        for i, s in enumerate(settings):
            lp = numpy_llama.log_softmax(numpy_llama.logits(w, chunk, sparse_from=args.prompt, **s)[rows])
            kl[i].append((np.exp(dense) * (dense - lp)).sum(axis=-1))
            agree[i].append(dense.argmax(-1) == lp.argmax(-1))
            print(f"chunk {c + 1}/{args.chunks} {s}: KL {kl[i][-1].mean():.4f} ({time.time() - t0:.0f} s)",
                  flush=True)
    rows_out = []
    for i, s in enumerate(settings):
        all_kl = np.concatenate(kl[i])
        rows_out.append({**s, "kl_mean": float(all_kl.mean()),
                         "kl_stderr": float(all_kl.std(ddof=1) / np.sqrt(len(all_kl))),
                         "top1_agreement_pct": 100.0 * float(np.concatenate(agree[i]).mean()),
                         "n_tokens": len(all_kl)})
    doc = {"model": model.name, "prompt": args.prompt, "decode": args.decode, "chunks": args.chunks,
           "machine": platform.processor() or platform.machine(), "seconds": round(time.time() - t0, 1),
           "results": rows_out}
    args.out.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    md = args.out.with_suffix(".md")
    lines = [f"# NumPy decode regime: SparQ selection (and mean-value reallocation) ({model.name})", "",
             f"Independent NumPy Llama (tests/numpy_llama.py), float64; {args.chunks} chunks of {args.prompt} dense "
             f"prompt tokens + {args.decode} decoded tokens of the default text; KL(dense || setting) over the "
             f"decoded tokens. Written by scripts/sparq_numpy_decode.py.", "",
             "| K | mode | scores | mean-V | KL mean ± stderr | top-1 agreement % |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows_out:
        scores = f"sparq r={r['sparq_r']}" if r.get("sparq_r") else "exact"
        scores += " shared by a KV head" if r.get("sparq_shared") else ""
        lines.append(f"| {r['top_k']} | {r['mode']} | {scores} | {'yes' if r.get('mean_v') else 'no'} | "
                     f"{r['kl_mean']:.4f} ± {r['kl_stderr']:.4f} | {r['top1_agreement_pct']:.1f} |")
    md.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(md.read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
