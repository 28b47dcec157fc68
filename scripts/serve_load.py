#!/usr/bin/env python3
"""llama-server under load, dense vs Sparse-K: failures, slot leaks, throughput, time to first token, and how far
each greedy answer under load agrees with the same request served alone.

For each server configuration (dense = the patched build with Sparse-K off; Sparse-K with the recommended mode,
window and sinks and a q4_0 score copy, once with the decode-only policy `--sparsek-max-ubatch 1` and once on every
ubatch): start llama-server (`-np` slots, continuous batching, `-t 2`), send `--requests` requests from `--clients`
concurrent clients (prompt lengths spread from 16 tokens up to what fits a slot, each from another place in the
Jargon File, every other request streamed, greedy, `ignore_eos` so every answer has exactly its n_predict tokens,
`cache_prompt` off), check /slots and /metrics that nothing is still held, then send the same requests one at a
time, and stop the server with SIGINT (it must exit 0). Writes OUT.json and OUT.md.

Usage: .venv/bin/python scripts/serve_load.py [--clients 16] [--requests 32] [--ctx 16384] [-np 4] [-t 2]
           [--n-predict 32,64] [--topk 64] [--configs dense,sk-decode,sk-all] [--out results/serve-load]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main() -> int:
    from pysparsek.data import corpus, models
    from pysparsek.llamacpp import build as builds
    from pysparsek.measure import load, machine, server
    from pysparsek.measure import serve_load as sl
    from pysparsek.proc import free_port
    from pysparsek.sparsek.recommended import RECOMMENDED
    from pysparsek.sparsek.settings import SparsekSettings

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--ctx", type=int, default=16384, help="llama-server -c (the whole KV cache)")
    ap.add_argument("-np", "--parallel", type=int, default=4)
    ap.add_argument("-t", "--threads", type=int, default=2, help="llama-server -t (1 where another process holds a "
                    "core: ggml's thread barriers then wait on a descheduled thread)")
    ap.add_argument("--n-predict", default="32,64")
    ap.add_argument("--max-prompt", type=int, default=0, help="longest prompt after the shared prefix (default: "
                    "what fits a slot)")
    ap.add_argument("--shared-prefix", type=int, default=0, help="every prompt starts with the text's first N tokens "
                    "(a long document every request asks about), cache_prompt on: decoding at a long context")
    ap.add_argument("--topk", type=int, default=64)
    ap.add_argument("--configs", default="dense,sk-decode,sk-all")
    ap.add_argument("--no-alone", action="store_true", help="skip the one-at-a-time reference pass")
    ap.add_argument("--model")
    ap.add_argument("--out", default="results/serve-load")
    args = ap.parse_args()

    model = Path(args.model) if args.model else models.default_model()
    binary = builds.require("patched", tools=("llama-server",)).tool("llama-server")
    sparse = RECOMMENDED.replace(top_k=args.topk, score_type="q4_0")
    configs = {
        "dense": SparsekSettings(top_k=0),
        "sk-decode": sparse.replace(max_ubatch=1),
        "sk-all": sparse.replace(max_ubatch=0),
    }
    names = args.configs.split(",")
    n_predict = [int(x) for x in args.n_predict.split(",")]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    # tokenize the text with the server's own tokenizer (a dense server, briefly)
    port = free_port()
    cfg0 = server.ServerConfig(sparsek=SparsekSettings(top_k=0), ctx=args.ctx, parallel=args.parallel,
                               threads=args.threads)
    with server.serving(server.command(binary, model, cfg0, port), out.with_suffix(".tokenize.log"), port) as srv:
        import httpx
        with httpx.Client(base_url=srv.url, timeout=120.0) as c:
            text = corpus.default_text().read_text(encoding="utf-8")[:400_000]
            tokens = server.tokenize(c, text)
            slot = sl.slot_ctx(c)
    max_prompt = args.max_prompt or slot - args.shared_prefix - max(n_predict) - 8
    if max_prompt < 16 or args.shared_prefix + max_prompt + max(n_predict) > slot:
        raise SystemExit(f"a slot holds {slot} tokens: the shared prefix ({args.shared_prefix}), the longest prompt "
                         f"({max_prompt}) and n_predict ({max(n_predict)}) do not fit")
    requests = load.workload(tokens, args.requests, max_prompt, n_predict, shared_prefix=args.shared_prefix)
    # with a shared prefix, one warm-up request per slot at once caches it in every slot, so the loaded phase
    # measures decoding at that context rather than the slots filling the same document (a slot started while
    # another computes the prefix computes it again)
    warmup = [load.Request(prompt=tuple(tokens[:max(32, args.shared_prefix)]), n_predict=4, stream=False,
                           cache_prompt=args.shared_prefix > 0)] * (args.parallel if args.shared_prefix else 1)
    print(f"{len(requests)} requests, prompts {args.shared_prefix} shared + "
          f"{min(len(r.prompt) for r in requests) - args.shared_prefix}..{max_prompt} tokens "
          f"(slot context {slot}), n_predict {n_predict}, {args.clients} clients, -np {args.parallel}", flush=True)

    results = []
    for name in names:
        cfg = server.ServerConfig(sparsek=configs[name], ctx=args.ctx, parallel=args.parallel, threads=args.threads)
        t0 = time.monotonic()
        r = sl.measure(name, binary, model, cfg, requests, args.clients, out.with_suffix(f".{name}.log"),
                       alone=not args.no_alone, warmup=warmup)
        results.append(r)
        print(f"{name}: {time.monotonic() - t0:.0f} s; {r.loaded.failed} failed, leaks {list(r.leaks)}, "
              f"{r.loaded.generated_tok_s:.1f} gen tok/s, TTFT p50 {r.loaded.ttft_p50_s}; {r.cpu.line()}",
              flush=True)

    info = machine.describe()
    doc = {"machine": info, "model": model.name, "clients": args.clients, "parallel": args.parallel,
           "ctx": args.ctx, "slot_ctx": slot, "n_predict": n_predict, "max_prompt": max_prompt,
           "shared_prefix": args.shared_prefix,
           "prompt_lengths": [len(r.prompt) for r in requests], "streamed": [r.stream for r in requests],
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "results": [r.to_json() for r in results]}
    out.with_suffix(".json").write_text(json.dumps(doc, indent=1))
    md = [f"# llama-server under load: dense vs Sparse-K ({model.name})", "",
          f"`scripts/serve_load.py {' '.join(sys.argv[1:])}` on {machine.one_line(info)}, {doc['date']}. "
          f"{len(requests)} requests from {args.clients} concurrent clients, `-np {args.parallel}` "
          f"(continuous batching), `-c {args.ctx}` (slot context {slot}), `-t {args.threads}`, flash attention; "
          + (f"prompts {args.shared_prefix} tokens shared by every request (one document, cache_prompt on) + "
             f"{min(doc['prompt_lengths']) - args.shared_prefix}..{max_prompt} of their own"
             if args.shared_prefix else f"prompts {min(doc['prompt_lengths'])}..{max_prompt} tokens (cache_prompt off)")
          + f", n_predict {n_predict} (greedy, ignore_eos), every other request streamed. Sparse-K: "
          + "; ".join(f"`{n}` = {configs[n].label}" for n in names if configs[n].enabled) + ".", "",
          sl.markdown_table(results), "",
          "Identical to alone: the answer's token ids equal those of the same request sent when the server had "
          "nothing else to do. First divergence: the index of the first generated token that differs. "
          "CPU busy: average cores used during the loaded phase by the server and by everything else on the "
          "machine (a shared machine: other processes took CPU time during these runs)."]
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0 if all(r.loaded.failed == 0 and not r.leaks and r.exit_code == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
