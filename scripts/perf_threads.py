#!/usr/bin/env python3
"""Where each thread's time goes in a `decode_steadiness.py --perf-dir` recording (cpu-clock samples of the timed
decodes only): per thread, ms per decoded token by part (the categories of cpu_profile.py), so a fast and a slow
process of the same setting can be set side by side, and a thread that waits can be told from one that works.

Usage: .venv/bin/python scripts/perf_threads.py DIR_OR_FILES... [--tokens 32] [--freq 4999] [--symbols N]
"""

from __future__ import annotations

import argparse
import collections
import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cpu_profile import CATEGORIES, OTHER


def category(sym: str, dso: str) -> str:
    name = f"{dso}:{sym}"
    return next((n for n, rx in CATEGORIES if rx.search(name)), OTHER)


def samples(path: Path) -> list[tuple[int, str, str]]:
    """(tid, symbol, dso) per sample."""
    out = subprocess.run(["perf", "script", "-i", str(path), "-F", "tid,ip,sym,dso"], capture_output=True,
                         text=True, check=True).stdout
    rows = []
    for line in out.splitlines():
        hit = re.match(r"\s*(\d+)\s+[0-9a-f]+\s+(.*?)\s+\((.*)\)\s*$", line)
        if hit:
            rows.append((int(hit.group(1)), hit.group(2), Path(hit.group(3)).name))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="+")
    ap.add_argument("--tokens", type=int, default=32, help="decoded tokens the recording covers")
    ap.add_argument("--freq", type=int, default=4999, help="perf's sampling frequency")
    ap.add_argument("--symbols", type=int, default=0, help="also the top N symbols per thread")
    args = ap.parse_args()
    files = [f for p in map(Path, args.paths) for f in (sorted(p.glob("*.data")) if p.is_dir() else [p])]
    ms = 1e3 / args.freq / args.tokens
    for f in files:
        rows = samples(f)
        by_tid: dict[int, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        syms: dict[int, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        for tid, sym, dso in rows:
            by_tid[tid][category(sym, dso)] += 1
            syms[tid][f"{sym} ({dso})"] += 1
        print(f"## {f.name}: ms per token by thread")
        tids = sorted(by_tid, key=lambda t: -sum(by_tid[t].values()))
        print(f"| part | {' | '.join(str(t) for t in tids)} |")
        print(f"|---|{'---:|' * len(tids)}")
        for name in [n for n, _ in CATEGORIES] + [OTHER]:
            print(f"| {name} | {' | '.join(f'{by_tid[t][name] * ms:.2f}' for t in tids)} |")
        print(f"| total | {' | '.join(f'{sum(by_tid[t].values()) * ms:.2f}' for t in tids)} |")
        for t in tids if args.symbols else []:
            print(f"thread {t}: " + "; ".join(f"{s} {n * ms:.2f}" for s, n in syms[t].most_common(args.symbols)))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
