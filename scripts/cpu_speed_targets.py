#!/usr/bin/env python3
"""Decode and prompt speed at one depth on this CPU: dense vs Sparse-K (decode-only policy; exact or score-copy
scoring, each mode) vs dense with a quantized KV cache, from llama-bench -o json.

Every setting runs in `--processes` separate llama-bench processes (rounds; in each round dense and every Sparse-K
setting share one process, which fills the cache once; the quantized caches get their own): a setting's speed can
differ from one process to the next for the same command (issue #23), so each is reported as the median over the
processes with its min-max and spread (max/min), and each ratio as the median of same-round ratios to dense (f16
cache). The issue's targets (spread <= 10 %, group exact >= 1.4x, q4_0 copy >= 2.0x dense) are checked at the end.

Usage: .venv/bin/python scripts/cpu_speed_targets.py [--depth 8192] [--configs 128:group,128:group:q4_0,128:head]
       [--processes 8] [--reps 2] [--n-prompt 512] [--no-caches]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pysparsek.measure.results import STEADY_SPREAD, Rate
from pysparsek.sparsek.settings import SparsekSettings

DEFAULT_CONFIGS = "128:group,128:group:q4_0,128:head,256:group,256:group:q4_0"
CACHES = ("q8_0", "q4_0")
# issue #23's targets for the median ratio to dense, by score type of a `group` setting
RATIO_TARGETS = {"none": 1.4, "q4_0": 2.0}


def parse_config(text: str) -> SparsekSettings:
    """`K:mode` or `K:mode:score_type`, with the decode-only policy (max_ubatch 1): prompts run dense's graph."""
    k, mode, score = [*text.split(":"), "", ""][:3]
    return SparsekSettings(top_k=int(k), mode=mode or "group", score_type=score or "none", max_ubatch=1)


def setting_label(s: SparsekSettings) -> str:
    st = "exact" if s.score_type == "none" else f"{s.score_type} copy"
    return f"K={s.top_k} {s.mode} {st}, decode-only"


@dataclass(frozen=True)
class Row:
    """One setting at one test: its rate over the processes and dense's in the same rounds."""
    setting: str
    test: str
    rate: Rate
    dense: Rate
    sparsek: SparsekSettings | None = None   # None: dense (with the f16 or a quantized cache)

    @property
    def ratios(self) -> list[float]:
        return [s / d for s, d in zip(self.rate.samples, self.dense.samples, strict=True)]

    @property
    def ratio(self) -> float:
        return statistics.median(self.ratios)

    def to_json(self) -> dict[str, Any]:
        return {"setting": self.setting, "test": self.test,
                "sparsek": self.sparsek.given() if self.sparsek else None, **self.rate.to_json(),
                **self.dense.to_json("dense_"), "ratio": self.ratio, "ratio_min": min(self.ratios),
                "ratio_max": max(self.ratios)}


def collect(rounds: list[list[tuple[str, SparsekSettings | None, str, float, float | None]]]) -> list[Row]:
    """Rows from per-round samples (setting label, Sparse-K settings, test, t/s, load); dense is the label
    `dense`."""
    samples: dict[tuple[str, str], list[tuple[float, float | None]]] = {}
    settings: dict[str, SparsekSettings | None] = {}
    for one in rounds:
        for label, s, test, ts, load in one:
            samples.setdefault((label, test), []).append((ts, load))
            settings[label] = s
    rows = []
    for (label, test), vals in samples.items():
        dense = samples[("dense", test)]
        rows.append(Row(label, test, Rate(tuple(v for v, _ in vals), tuple(ld for _, ld in vals)),
                        Rate(tuple(v for v, _ in dense), tuple(ld for _, ld in dense)), settings[label]))
    return rows


def check_targets(rows: list[Row]) -> list[str]:
    """The issue's targets, one line each: every setting steady; `group` medians against dense."""
    lines = []
    for r in rows:
        if r.sparsek is not None or r.setting == "dense":
            ok = r.rate.spread <= STEADY_SPREAD
            lines.append(f"{'PASS' if ok else 'FAIL'}  {r.setting} {r.test}: spread {r.rate.spread:.3f} "
                         f"(target <= {STEADY_SPREAD:.2f})")
        target = RATIO_TARGETS.get(str(r.sparsek.score_type)) if r.sparsek and r.sparsek.mode == "group" else None
        if target and r.test.startswith("tg"):
            lines.append(f"{'PASS' if r.ratio >= target else 'FAIL'}  {r.setting} {r.test}: {r.ratio:.2f}x dense "
                         f"(target >= {target:.1f}x; lowest round {min(r.ratios):.2f}x)")
    return lines


def table(rows: list[Row], tests: list[str]) -> list[str]:
    head = "| setting | test | t/s (median) | min-max t/s | spread | vs dense | min-max vs dense |"
    lines = [head, "|---|---|---:|---:|---:|---:|---:|"]
    for t in tests:
        for r in (r for r in rows if r.test == t):
            flag = "" if r.rate.spread <= STEADY_SPREAD else " **!**"
            lines.append(f"| {r.setting} | {t} | {r.rate.median:.2f} | {r.rate.low:.2f}-{r.rate.high:.2f} | "
                         f"{r.rate.spread:.3f}{flag} | {r.ratio:.2f}× | {min(r.ratios):.2f}-{max(r.ratios):.2f}× |")
    return lines


def main(argv: list[str] | None = None) -> int:
    from pysparsek.data import models
    from pysparsek.llamacpp import build
    from pysparsek.measure import machine, speed

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depth", type=int, default=8192)
    ap.add_argument("--configs", default=DEFAULT_CONFIGS, help=f"K:mode[:score_type],... (default {DEFAULT_CONFIGS})")
    ap.add_argument("--processes", type=int, default=8, help="separate llama-bench processes per setting (default 8)")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--n-prompt", type=int, default=512, help="prompt test tokens (0: decode only)")
    ap.add_argument("--n-gen", type=int, default=32)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--model")
    ap.add_argument("--no-caches", action="store_true", help="skip the dense runs with q8_0/q4_0 K/V caches (slow)")
    ap.add_argument("--max-busy", type=float, default=1.0, help="before each llama-bench process, wait until the "
                    "CPUs were at most this busy over 3 s (e.g. 0.1 on a shared machine; default 1 = never wait)")
    ap.add_argument("--out", default="results/cpu-speed-targets")
    args = ap.parse_args(argv)
    if args.processes < 1:
        ap.error("--processes must be >= 1")

    patched = build.require("patched")
    model = Path(args.model) if args.model else models.default_model()
    configs = [speed.DENSE, *(parse_config(c) for c in args.configs.split(","))]
    common = {"n_prompt": args.n_prompt, "n_gen": args.n_gen, "depths": [args.depth], "reps": args.reps,
              "threads": args.threads, "flash_attn": True, "ngl": 0}
    caches = () if args.no_caches else CACHES
    t0 = time.time()

    def gate() -> None:
        if args.max_busy < 1:
            machine.wait_until_idle(args.max_busy, log=lambda m: print(m, file=sys.stderr, flush=True))

    rounds = []
    for p in range(args.processes):
        one: list[tuple[str, SparsekSettings | None, str, float, float | None]] = []

        def progress(label: str, p: int = p) -> None:
            label = label.split(": ", 1)[-1]  # interleaved's own count is 1/1 here
            print(f"[{time.time() - t0:5.0f} s] process {p + 1}/{args.processes}: {label}", file=sys.stderr,
                  flush=True)

        # the Sparse-K batch (dense f16 in it), then dense with each quantized cache in its own process
        for m in speed.interleaved(patched, model, configs, processes=1, progress=progress, gate=gate,
                                   cache_types=caches, **common):
            sparse = m.config.top_k
            label = (setting_label(m.config) if sparse
                     else "dense" if m.cache_type == speed.F16 else f"dense, cache {m.cache_type}")
            one.append((label, m.config if sparse else None, m.test, m.samples_ts[0], m.loads[0]))
        rounds.append(one)
    rows = collect(rounds)
    tests = sorted({r.test for r in rows}, reverse=True)
    loads = [ld for r in rows for ld in r.rate.loads if ld is not None]
    lines = [f"{model.name}, depth {args.depth}, flash attention, {args.processes} processes per setting × "
             f"{args.reps} reps, machine {machine.one_line()}, 1-minute load as each process started "
             f"{min(loads, default=float('nan')):.2f}-{max(loads, default=float('nan')):.2f}, "
             f"{time.time() - t0:.0f} s", "", *table(rows, tests), "",
             f"spread = max/min t/s over the processes (**!** above {STEADY_SPREAD:.2f}); vs dense = median of "
             "same-round ratios", "", "```", *check_targets(rows), "```"]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({
        "model": str(model), "depth": args.depth, "processes": args.processes, "reps": args.reps,
        "machine": machine.describe(), "rows": [r.to_json() for r in rows]}, indent=2) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
