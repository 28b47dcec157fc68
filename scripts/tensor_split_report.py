#!/usr/bin/env python3
"""Issue #19, point 1 on a CPU-only machine: Sparse-K under -sm tensor (ggml's meta backend) and -sm layer over two
loopback ggml-rpc-server processes, against one device; see pysparsek.measure.splits for what each column is.

Usage: .venv/bin/python scripts/tensor_split_report.py [--chunks N] [--decode] > results/tensor-split-sparsek-cpu.md
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

from pysparsek.data import corpus, models
from pysparsek.llamacpp import build as builds
from pysparsek.llamacpp import rpc
from pysparsek.measure import machine, perplexity, splits
from pysparsek.measure.perplexity import Settings
from pysparsek.proc import run
from pysparsek.sparsek.settings import SparsekSettings


def progress(msg: str) -> None:
    print(f"  {msg}", file=sys.stderr, flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--chunks", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2, help="threads of the client and of each server")
    ap.add_argument("--decode", action="store_true",
                    help="also one-token ubatches (the decode path) at ctx 64, K=16 group q4_0, exact split only")
    args = ap.parse_args()
    patched, stock = builds.require("patched"), builds.require("stock")
    model = models.default_model()
    base = Settings(ctx=args.ctx, chunks=args.chunks, batch=1024, ubatch=256, threads=args.threads, flash_attn="on")
    with tempfile.TemporaryDirectory(prefix="tensor-split-") as tmp:
        out = Path(tmp)
        text = out / "text.txt"
        text.write_text(corpus.default_text().read_text(encoding="utf-8")[:60_000], encoding="utf-8")
        print(f"machine: {machine.one_line()}")
        print(f"model: {model.name}; text: first 60 kB of {corpus.default_text().name}; ctx {args.ctx}, "
              f"{args.chunks} chunks, -b 1024 -ub 256 -fa on -t {args.threads}; two ggml-rpc-server on 127.0.0.1 "
              f"(-t {args.threads} each)\n")
        print(f"command: {' '.join(perplexity.command(patched, model, Path('TEXT'), base))} SPARSEK_FLAGS "
              f"[-ngl 99 --rpc A,B SPLIT]\n")
        print("-sm layer: `" + " ".join(splits.LAYER) + "`; heads 2:1, sums on the CPU: `" +
              " ".join(splits.TENSOR_EXACT) + "`; -sm tensor: `" + " ".join(splits.TENSOR) + "` (even split)\n")

        rows = splits.measure_local_servers(patched, model, text, base, out, threads=args.threads, progress=progress)
        print("## Perplexity, patched build; (identical) = per-token log-probabilities byte for byte as one device\n")
        print(splits.table(rows) + "\n")

        progress("dense -sm tensor, stock build and servers")
        dense = dataclasses.replace(base, sparsek=SparsekSettings())
        with rpc.local_servers(stock, 2, out, threads=args.threads) as servers:
            st = perplexity.measure(stock, model, text, splits.remote(dense, servers.endpoints, *splits.TENSOR))
            stx = perplexity.measure(stock, model, text, splits.remote(dense, servers.endpoints, *splits.TENSOR_EXACT))
        pt = next(r for r in rows if not r.settings.enabled)
        print("## Dense -sm tensor, stock build (stock client and servers) vs patched\n")
        print(f"- even split: stock {st.final} [{', '.join(st.chunks)}], patched {pt.tensor.final}")
        print(f"- heads 2:1, sums on the CPU: stock {stx.final} [{', '.join(stx.chunks)}], "
              f"patched {pt.tensor_exact.final} [{', '.join(pt.tensor_exact.chunks)}]\n")

        with rpc.local_servers(patched, 2, out, threads=args.threads) as servers:
            progress("token mode under -sm tensor")
            s = dataclasses.replace(base, chunks=1, sparsek=SparsekSettings(top_k=64, mode="token"))
            proc = run(perplexity.command(patched, model, text, splits.remote(s, servers.endpoints, *splits.TENSOR)),
                       check=False)
            refusal = next((line for line in proc.stdout.splitlines() if "Sparse-K mode token" in line), "(none)")
            print("## Mode token under -sm tensor (refused)\n")
            print(f"exit {proc.returncode}: `{refusal.split(' E ', 1)[-1].strip()}`\n")

            if args.decode:
                progress("decode path (one-token ubatches)")
                d = Settings(ctx=64, chunks=1, batch=64, ubatch=1, threads=args.threads, flash_attn="on",
                             sparsek=SparsekSettings(top_k=16, mode="group", score_type="q4_0"))
                one = perplexity.measure(patched, model, text, d)
                ex = perplexity.measure(patched, model, text, splits.remote(d, servers.endpoints, *splits.TENSOR_EXACT))
                print("## One-token ubatches (-c 64 -b 64 -ub 1, K=16 group q4_0)\n")
                print(f"one device {one.final}, -sm tensor heads 2:1 sums on the CPU {ex.final}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
