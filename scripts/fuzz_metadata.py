#!/usr/bin/env python3
"""Fuzz the Sparse-K GGUF keys at scale: N seeded cases of mutated metadata on a tiny random Llama, each loaded
(and decoded) by the patched llama.cpp in a child process, checked against the documented rule
(pysparsek.measure.metafuzz). tests/test_metafuzz.py runs a small sample of the same cases in CI.

Writes OUT.json (every case, its expected and actual outcome, what meta.read said) and OUT.md (counts, problems,
the machine and its load). Exits 1 if any case crashed, hung or disagreed with the rule.

Usage: .venv/bin/python scripts/fuzz_metadata.py [--cases 500] [--seed 0] [--out results/metadata-fuzz]
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    from pysparsek.llamacpp import build as builds
    from pysparsek.llamacpp import patches
    from pysparsek.measure import machine, metafuzz

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0, help="first seed; cases use seeds seed .. seed+cases-1")
    ap.add_argument("--out", default="results/metadata-fuzz")
    args = ap.parse_args()

    builds.require("patched")
    load_before = os.getloadavg()
    t0 = time.monotonic()
    verdicts = []
    with tempfile.TemporaryDirectory(prefix="pysparsek-fuzz-") as tmp:
        for i, seed in enumerate(range(args.seed, args.seed + args.cases)):
            v = metafuzz.run_case(seed, Path(tmp))
            verdicts.append(v)
            if v.problems:
                print(f"seed {seed}: " + "; ".join(v.problems), file=sys.stderr, flush=True)
            if (i + 1) % 50 == 0:
                print(f"{i + 1}/{args.cases} cases, {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
    elapsed = time.monotonic() - t0
    load_after = os.getloadavg()

    kinds = collections.Counter(v.outcome.kind for v in verdicts)
    expected = collections.Counter("refused" if v.expected.refused_by else "loaded" for v in verdicts)
    python = collections.Counter(v.python_kind for v in verdicts)
    failed = [v for v in verdicts if v.problems]
    on = [v.outcome.settings for v in verdicts if v.outcome.settings is not None and v.outcome.settings.top_k]
    doc = {"created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "machine": machine.describe(), "loadavg_before": load_before, "loadavg_after": load_after,
           "patch_series_sha256": patches.series_hash(), "first_seed": args.seed, "cases": args.cases,
           "seconds": round(elapsed, 1), "outcomes": dict(kinds), "expected": dict(expected),
           "meta_read": dict(python), "failed": len(failed), "verdicts": [v.to_json() for v in verdicts]}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(doc, indent=1) + "\n")

    by_key = collections.Counter(v.expected.refused_by for v in verdicts if v.expected.refused_by)
    lines = [
        "# Sparse-K metadata fuzz",
        "",
        f"`scripts/fuzz_metadata.py --cases {args.cases} --seed {args.seed}`, {doc['created']}; "
        f"{machine.one_line(doc['machine'])}; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after "
        f"(shared machine); {elapsed:.0f} s; patch series {doc['patch_series_sha256'][:12]}.",
        "",
        "Each case: a tiny random-weight Llama (head size 32, 48 or 16), half the time with a working Sparse-K "
        "setting, and 1-4 mutated keys under `llama.attention.sparsek.` (or near it), loaded by the patched "
        "llama.cpp through `llm.load` in a child "
        "process (`pysparsek.sparsek.load_probe`, glibc heap checks on), a prompt evaluated in ubatches of 16 and 4 "
        "tokens decoded; then `meta.read` on the same file. Checked against the documented rule "
        "(`pysparsek.measure.metafuzz.expect`).",
        "",
        "| | count |",
        "| --- | ---: |",
        *[f"| llama.cpp: {k} | {n} |" for k, n in sorted(kinds.items())],
        *[f"| expected: {k} | {n} |" for k, n in sorted(expected.items())],
        *[f"| meta.read: {k} | {n} |" for k, n in sorted(python.items())],
        f"| loaded with Sparse-K on (top_k > 0) | {len(on)} |",
        f"| ... with a score copy / with the decode-only policy | {sum(s.score_type != 'none' for s in on)} / "
        f"{sum(bool(s.max_ubatch) for s in on)} |",
        f"| **cases disagreeing with the rule, crashed or hung** | **{len(failed)}** |",
        "",
        "Refusals expected, by the key that is why:",
        "",
        *[f"- `{k}`: {n}" for k, n in by_key.most_common()],
        "",
    ]
    if failed:
        lines += ["## Problems", ""] + [f"- seed {v.case.seed}: " + "; ".join(v.problems) for v in failed]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"{args.cases} cases in {elapsed:.0f} s: {dict(kinds)}; {len(failed)} problems; "
          f"wrote {out.with_suffix('.md')} and .json")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
