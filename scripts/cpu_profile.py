#!/usr/bin/env python3
"""Where a CPU decode step's time goes, dense vs Sparse-K: `perf record` on the decode tokens only.

One child process fills the context once (dense, so the fill is fast), then decodes `--tokens` tokens for each
configuration in turn, switching Sparse-K with llama_set_sparsek; `perf` is attached only while those tokens
are decoded. Symbols are grouped into the parts of an attention step (scores, selection, attention, weights).
Needs `perf` (Debian linux-perf) and the patched CPU build.

Usage: .venv/bin/python scripts/cpu_profile.py [--depth 8192] [--tokens 33] [--configs dense,256:head,256:group:q4_0]
       (a config is dense, K, K:mode or K:mode:score_type)
       .venv/bin/python scripts/cpu_profile.py --tokens 513 --batch 512      # prompt processing instead
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CATEGORIES = [  # first match wins; patterns are on perf's symbol names
    ("Sparse-K mask op (selection)", re.compile(r"sparsek|introselect|nth_element", re.I)),
    ("flash attention kernel (softmax, V sums, mask scan)", re.compile(r"flash_attn")),
    ("q4_0 q·k of the score copy (vec_dot / tinyBLAS Q0 GEMM)", re.compile(r"vec_dot_q4_0|tinyBLAS_Q0")),
    ("f16 q·k products (FA's own when dense; the selection's scores: vec_dot / tinyBLAS GEMM)",
     re.compile(r"vec_dot_f16|tinyBLAS")),
    ("f16 V accumulation", re.compile(r"vec_mad")),
    ("weight matmuls (Q4_1/Q8 dot products, activation quantization)",
     re.compile(r"vec_dot_q|quantize_row_q|gemv|gemm")),
    ("threads waiting (OpenMP spin, barriers)", re.compile(r"libgomp|barrier|graph_compute_thread|sched_yield|futex")),
]
OTHER = "other (norms, rope, softmax of logits, copies, ...)"


def parse_config(text: str) -> tuple[str, int, str, str]:
    """`dense`, `K`, `K:mode` or `K:mode:score_type` (score type none, f16, q8_0, q4_0)."""
    if text == "dense":
        return "dense", 0, "head", "none"
    k, mode, score = [*text.split(":"), "", ""][:3]
    mode, score = mode or "head", score or "none"
    label = f"K={k} {mode}" + ("" if score == "none" else f" {score}")
    return label, int(k), mode, score


def child(args: argparse.Namespace) -> int:
    from pysparsek.data import corpus, models
    from pysparsek.sparsek import llm
    from pysparsek.sparsek.settings import SparsekSettings

    configs = [parse_config(c) for c in args.configs.split(",")]
    n_ctx = args.depth + args.tokens * len(configs) + 64
    m = llm.load(models.default_model(), n_ctx=n_ctx, n_batch=512, n_ubatch=512, n_threads=args.threads,
                 flash_attn=True)
    toks = m.tokenize(corpus.default_text().read_text(encoding="utf-8").encode(), add_bos=False)
    need = args.depth + args.tokens * len(configs)
    if len(toks) < need:
        raise SystemExit(f"the text has {len(toks)} tokens, {need} needed")
    t0 = time.perf_counter()
    m.eval(toks[: args.depth])
    print(f"FILLED {time.perf_counter() - t0:.1f}", flush=True)
    pos = args.depth
    for label, k, mode, score in configs:
        llm.set_sparsek(m, SparsekSettings(top_k=k, mode=mode, score_type=score))
        m.eval([toks[pos]])  # first step after a change re-reserves the graph: not measured
        pos += 1
        print(f"READY {label}", flush=True)
        sys.stdin.readline()
        t0 = time.perf_counter()
        n_done = 0
        while n_done < args.tokens - 1:
            step = min(args.batch, args.tokens - 1 - n_done)
            m.eval(toks[pos: pos + step])
            pos += step
            n_done += step
        print(f"DONE {(time.perf_counter() - t0) / n_done * 1e3:.3f}", flush=True)
    m.close()
    return 0


def perf_shares(data: Path, show: int = 0) -> dict[str, float]:
    out = subprocess.run(["perf", "report", "-i", str(data), "--no-children", "--sort", "dso,sym", "--stdio", "-q",
                          "--percent-limit", "0.05"], capture_output=True, text=True, check=True).stdout
    shares: dict[str, float] = {}
    for line in out.splitlines():
        hit = re.match(r"\s*([\d.]+)%\s+(\S+)\s+\[.\]\s+(.+?)\s*$", line)
        if not hit:
            continue
        pct, sym = float(hit.group(1)), f"{hit.group(2)}:{hit.group(3)}"
        if show > 0:
            print(f"    {pct:6.2f}%  {sym}", file=sys.stderr)
            show -= 1
        cat = next((name for name, rx in CATEGORIES if rx.search(sym)), OTHER)
        shares[cat] = shares.get(cat, 0.0) + pct
    return shares


def parent(args: argparse.Namespace) -> int:
    from pysparsek.measure import machine

    cmd = [sys.executable, __file__, "--child", "--depth", str(args.depth), "--tokens", str(args.tokens),
           "--batch", str(args.batch),
           "--configs", args.configs, "--threads", str(args.threads)]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdin and proc.stdout
    results: list[tuple[str, float, dict[str, float]]] = []
    with tempfile.TemporaryDirectory(prefix="pysparsek-perf-") as tmp:
        for line in proc.stdout:
            word, _, rest = line.strip().partition(" ")
            if word == "FILLED":
                print(f"filled {args.depth} tokens in {rest} s", file=sys.stderr, flush=True)
            elif word == "READY":
                label = rest
                data = Path(tmp) / "perf.data"
                perf = subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock", "-F", "2000", "-o", str(data),
                                         "-p", str(proc.pid)], stderr=subprocess.DEVNULL)
                time.sleep(0.5)  # let perf attach
                proc.stdin.write("\n")
                proc.stdin.flush()
            elif word == "DONE":
                perf.send_signal(signal.SIGINT)
                perf.wait()
                results.append((label, float(rest), perf_shares(data, args.show_symbols)))
                print(f"{label}: {float(rest):.2f} ms/token", file=sys.stderr, flush=True)
    if proc.wait() != 0:
        return proc.returncode
    print(f"machine: {machine.one_line()}; threads {args.threads}")
    what = "decode" if args.batch == 1 else f"prefill in batches of {args.batch}"
    print(f"{what} at depth {args.depth}, {args.tokens - 1} tokens per configuration, flash attention on; "
          "ms per token by part (perf samples of the process × measured time per token)\n")
    names = [name for name, _ in CATEGORIES] + [OTHER]
    print(f"| part | {' | '.join(label for label, _, _ in results)} |")
    print(f"|---|{'---:|' * len(results)}")
    for name in names:
        cells = []
        for _, ms, shares in results:
            total = sum(shares.values()) or 1.0
            cells.append(f"{ms * shares.get(name, 0.0) / total:.2f}")
        print(f"| {name} | {' | '.join(cells)} |")
    print(f"| **total (measured)** | {' | '.join(f'**{ms:.2f}**' for _, ms, _ in results)} |")
    dense = next((ms for label, ms, _ in results if label == "dense"), None)
    if dense:
        print(f"| speed vs dense | {' | '.join(f'{dense / ms:.2f}x' for _, ms, _ in results)} |")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depth", type=int, default=8192)
    ap.add_argument("--tokens", type=int, default=33, help="decode steps per configuration (first one unmeasured)")
    ap.add_argument("--batch", type=int, default=1, help="tokens per decode call: 1 = token generation, "
                    "e.g. 512 with --tokens 513 = one prompt-processing step")
    ap.add_argument("--configs", default="dense,256:head,256:group,256:token,64:head")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--show-symbols", type=int, default=0, metavar="N", help="print each run's top N symbols")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    return child(args) if args.child else parent(args)


if __name__ == "__main__":
    sys.exit(main())
