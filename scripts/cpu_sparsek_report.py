#!/usr/bin/env python3
"""Issue #3 measurements on this machine: SmolLM2 perplexity vs K, and llama-bench ratios vs dense (CPU).

Usage: .venv/bin/python scripts/cpu_sparsek_report.py [--quick] > report.txt
"""

from __future__ import annotations

import argparse
import os
import sys

from pysparsek.cli.main import depth_list, positive_int_list
from pysparsek.data import corpus, models
from pysparsek.llamacpp import build as builds
from pysparsek.measure import compare, machine, speed
from pysparsek.measure.perplexity import Settings
from pysparsek.report import tables
from pysparsek.sparsek.settings import SparsekSettings


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--skip-ppl", action="store_true")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--processes", type=int, default=3, help="llama-bench processes per setting (default 3)")
    ap.add_argument("--topk", type=positive_int_list, default=[64, 256])
    ap.add_argument("--modes", default="head,group,token")
    ap.add_argument("--depths", type=depth_list, default=[0, 2048, 8192])
    ap.add_argument("--ppl-topk", type=positive_int_list, default=[16, 32, 64, 128, 256, 512])
    ap.add_argument("--ppl-contexts", type=lambda v: [tuple(int(y) for y in x.split(":")) for x in v.split(",")],
                    default=[(512, 16), (2048, 8)], help="CTX:CHUNKS,... (default 512:16,2048:8)")
    ap.add_argument("--fa", default="off,on", help="attention paths for the head-mode table (default off,on)")
    ap.add_argument("--ppl-modes", default="group,token", help="extra modes at ctx 2048, FA on ('' for none)")
    args = ap.parse_args()
    model, text = models.default_model(), corpus.default_text()
    print(f"machine: {machine.one_line()}")
    print(f"model: {model.name}; text: {text.name}\n", flush=True)
    if not args.skip_ppl:
        for ctx, chunks in args.ppl_contexts:
            for fa in args.fa.split(","):
                s = Settings(ctx=ctx, chunks=chunks, flash_attn=fa, sparsek=SparsekSettings(mode="head"))
                res = compare.run(model, text, s, args.ppl_topk, quiet=True)
                print(f"## perplexity, ctx {ctx}, {chunks} chunks, flash attention {fa}, mode head")
                print(res.table() + "\n", flush=True)
        s = Settings(ctx=2048, chunks=8, flash_attn="on")
        for mode in filter(None, args.ppl_modes.split(",")):
            res = compare.run(model, text, s.with_sparsek(mode=mode), [64, 256], quiet=True)
            print(f"## perplexity, ctx 2048, 8 chunks, flash attention on, mode {mode}")
            print(res.table() + "\n", flush=True)
    if not args.skip_speed:
        configs = [speed.DENSE] + [SparsekSettings(top_k=k, mode=m) for k in args.topk for m in args.modes.split(",")]
        meas = speed.interleaved(builds.require("patched"), model, configs, processes=args.processes, n_prompt=512,
                                 n_gen=32, depths=args.depths, threads=os.cpu_count(), flash_attn=True,
                                 progress=lambda s: print(f"  {s}", file=sys.stderr, flush=True))
        print(f"## llama-bench -fa 1, {args.processes} processes per setting (ratio = median of same-round ratios)")
        print(tables.speed_rows(speed.summarize(meas)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
