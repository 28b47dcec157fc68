#!/usr/bin/env python3
"""Decode speed of one setting in many separate processes, cheaply (issue #23): the KV cache is filled once to
`--depth` (densely, from the default text) and saved to a state file; each measuring process loads the model and
that state, decodes `--warmup` tokens unmeasured, then times `--tokens` single-token decodes. Every process sees
the same cache and the same tokens, so what differs between processes is the process itself (addresses, thread
placement, timing), as between llama-bench processes, without paying llama-bench's fill in each.

Each process also reports, per thread, the voluntary and involuntary context switches during the timed decodes and
the CPU it last ran on (from /proc), and the 1-minute load when it started.

A config `A+B` measures A and B in one process, each in a context of its own restored from the same state, their
tokens interleaved (A, B, A, B, ...): their ratio is taken under the same conditions of the machine, token pair by
token pair, even where the machine's own speed changes from one second to the next (issue #23: on a 2-core AMD
EPYC VM the memory bandwidth swings ~2x in phases of ~10 s with nothing else running in the VM).

Usage: .venv/bin/python scripts/decode_steadiness.py [--configs dense,128:group,128:group:q4_0,128:head]
       [--processes 8] [--depth 8192] [--tokens 32] [--threads 2] [--env NAME=VALUE ...] [--wrap 'taskset -c 0,1']
       [--lib-dir DIR] [--json OUT]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

STATE_DIR = Path("build/cache/decode-states")


def parse_config(text: str) -> dict[str, Any]:
    """`dense`, `K:mode` or `K:mode:score_type` (exact scoring when no score type is given)."""
    if text == "dense":
        return {"top_k": 0}
    k, mode, score = [*text.split(":"), "", ""][:3]
    return {"top_k": int(k), "mode": mode or "group", "score_type": score or "none"}


def _load(args: argparse.Namespace, n_ctx: int) -> Any:
    from pysparsek.data import models
    from pysparsek.sparsek import llm

    lib_dir = Path(args.lib_dir) if args.lib_dir else None
    return llm.load(models.default_model(), lib_dir=lib_dir, n_ctx=n_ctx, n_batch=512, n_ubatch=512,
                    n_threads=args.threads, n_threads_batch=args.threads, flash_attn=True)


def n_ctx_of(args: argparse.Namespace) -> int:
    if args.warmup + args.tokens > 256:
        raise SystemExit("--warmup + --tokens must be <= 256")
    return args.depth + 512


def state_path(args: argparse.Namespace) -> Path:
    """The state of the filled cache, and the text's first depth + 256 tokens beside it."""
    return STATE_DIR / f"smollm2-d{args.depth}.state"


def fill(args: argparse.Namespace) -> int:
    """Evaluate the first `depth` tokens densely and save the context's state."""
    path = state_path(args)
    path.parent.mkdir(parents=True, exist_ok=True)
    from pysparsek.data import corpus

    m = _load(args, n_ctx_of(args))
    toks = m.tokenize(corpus.default_text().read_text(encoding="utf-8").encode(), add_bos=False)
    need = args.depth + 256
    if len(toks) < need:
        raise SystemExit(f"the text has {len(toks)} tokens, {need} needed")
    path.with_suffix(".tokens.json").write_text(json.dumps(toks[:need]))
    toks = toks[: args.depth]
    import llama_cpp  # bound to the library by _load

    t0 = time.perf_counter()
    m.eval(toks)
    arr = (llama_cpp.llama_token * len(toks))(*toks)
    tmp = path.with_suffix(".tmp")
    if not llama_cpp.llama_state_save_file(m.ctx, str(tmp).encode(), arr, len(toks)):
        raise SystemExit("llama_state_save_file failed")
    tmp.rename(path)
    print(f"filled {args.depth} tokens in {time.perf_counter() - t0:.1f} s -> {path}", file=sys.stderr)
    return 0


def _threads() -> dict[str, dict[str, int]]:
    """Per thread of this process: voluntary/involuntary context switches and the CPU it last ran on."""
    out = {}
    for task in Path("/proc/self/task").iterdir():
        status = dict(line.split(":", 1) for line in (task / "status").read_text().splitlines() if ":" in line)
        stat = (task / "stat").read_text().rsplit(")", 1)[1].split()
        out[task.name] = {"voluntary": int(status["voluntary_ctxt_switches"]),
                          "involuntary": int(status["nonvoluntary_ctxt_switches"]),
                          "cpu": int(stat[36])}  # field 39 of stat, counted after the ")"
    return out


def child(args: argparse.Namespace) -> int:
    """One measuring process: load the state, decode, print one JSON line."""
    import ctypes

    from pysparsek.sparsek import llm
    from pysparsek.sparsek.settings import SparsekSettings

    load = os.getloadavg()[0]
    n_ctx = n_ctx_of(args)

    def restored(config: str) -> Any:
        """A context of its own for one setting, holding the saved cache."""
        cfg = parse_config(config)
        m = _load(args, n_ctx)
        import llama_cpp  # bound to the library by _load
        if cfg["top_k"]:
            llm.set_sparsek(m, SparsekSettings(**cfg, max_ubatch=1))  # dense: the model has no Sparse-K metadata
        arr = (llama_cpp.llama_token * n_ctx)()
        n_out = ctypes.c_size_t()
        if not llama_cpp.llama_state_load_file(m.ctx, str(state_path(args)).encode(), arr, n_ctx,
                                               ctypes.byref(n_out)):
            raise SystemExit("llama_state_load_file failed")
        m.n_tokens = n_out.value
        m.input_ids[: n_out.value] = arr[: n_out.value]
        return m

    # a config A+B: several settings in one process, their tokens interleaved (dense, sparse, dense, ...), so each pair
    # of timings is taken within ~50 ms of each other, under the same conditions of the machine
    configs = args.config.split("+")
    ctxs = [restored(c) for c in configs]
    m = ctxs[-1]
    import llama_cpp  # bound to the library by _load
    toks = json.loads(state_path(args).with_suffix(".tokens.json").read_text())
    toks = toks[args.depth: args.depth + args.warmup + args.tokens]
    for t in toks[: args.warmup]:
        for c in ctxs:
            c.eval([t])
    perf = None
    if args.perf:
        # cpu-clock samples of the timed decodes only, every thread of this process
        perf = subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock", "-F", "4999", "-o", args.perf,
                                 "-p", str(os.getpid())], stderr=subprocess.DEVNULL)
        time.sleep(0.5)  # let perf attach
    before = _threads()
    times: list[list[float]] = [[] for _ in ctxs]
    for t in toks[args.warmup:]:
        for c, ts in zip(ctxs, times, strict=True):
            t0 = time.perf_counter()
            c.eval([t])
            ts.append(time.perf_counter() - t0)
    after = _threads()
    if perf:
        perf.send_signal(signal.SIGINT)
        perf.wait()
    threads = {tid: {"voluntary": a["voluntary"] - before.get(tid, a)["voluntary"],
                     "involuntary": a["involuntary"] - before.get(tid, a)["involuntary"], "cpu": a["cpu"]}
               for tid, a in after.items()}
    # the last token's logits, so runs of different builds can be checked for bit-identical results
    logits = ctypes.string_at(llama_cpp.llama_get_logits(m.ctx), 4 * llama_cpp.llama_n_vocab(
        llama_cpp.llama_model_get_vocab(m.model)))
    paired = {c: {"ts": len(ts) / sum(ts), "ms": [1e3 * t for t in ts]} for c, ts in zip(configs, times, strict=True)}
    print(json.dumps({"config": args.config, "ts": len(times[-1]) / sum(times[-1]),
                      "ms": [1e3 * t for t in times[-1]], "paired": paired if len(configs) > 1 else None,
                      "logits_sha256": hashlib.sha256(logits).hexdigest(),
                      "load_1min": load, "threads": threads, "pid": os.getpid()}))
    return 0


def parent(args: argparse.Namespace) -> int:
    from pysparsek.measure import machine

    if not state_path(args).is_file():
        subprocess.run([sys.executable, __file__, "--fill", *_common(args)], check=True)
    from pysparsek.llamacpp import build

    env = dict(os.environ)
    # the libraries next to libllama, not those its RUNPATH names (a build copied from another tree)
    lib_dir = Path(args.lib_dir) if args.lib_dir else build.require("patched", auto_build=False).lib_dir
    env["LD_LIBRARY_PATH"] = str(lib_dir.resolve())
    env.update(dict(e.split("=", 1) for e in args.env))
    rows: dict[str, list[dict[str, Any]]] = {c: [] for c in args.configs.split(",")}
    t0 = time.time()
    for p in range(args.processes):
        for c in rows:
            n = f"{p:02d}-{c.replace(':', '-')}"
            cmd = [*shlex.split(args.wrap.format(n=n)), sys.executable, __file__, "--child", c, *_common(args)]
            if args.perf_dir:
                Path(args.perf_dir).mkdir(parents=True, exist_ok=True)
                cmd += ["--perf", str(Path(args.perf_dir) / f"{n}.data")]
            busy = machine.wait_until_idle(args.max_busy, log=lambda m: print(m, file=sys.stderr, flush=True)) \
                if args.max_busy < 1 else None
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            if out.returncode != 0:
                raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
            rec = json.loads(out.stdout.strip().splitlines()[-1])
            rec["diag"] = [ln for ln in out.stderr.splitlines() if ln.startswith("GGML_DIAG")]  # a diagnostic build
            if args.wrap:
                rec["wrap_stderr"] = out.stderr[-4000:]
            rec["busy_before"] = busy
            rows[c].append(rec)
            sw = {k: (v["voluntary"], v["involuntary"], v["cpu"]) for k, v in rec["threads"].items()}
            print(f"[{time.time() - t0:5.0f} s] {p + 1}/{args.processes} {c:<16} {rec['ts']:7.2f} t/s  load "
                  f"{rec['load_1min']:.2f} busy before {busy if busy is None else round(busy, 3)}  "
                  f"threads (vol, invol, cpu): {sw}", file=sys.stderr, flush=True)
    print(f"machine {machine.one_line()}; depth {args.depth}, {args.tokens} timed decodes after {args.warmup}, "
          f"{args.threads} threads, env {args.env or '-'}, wrap {args.wrap or '-'}")
    print(f"{'setting':<16} {'median':>8} {'min':>7} {'max':>7} {'spread':>7}  per process (t/s)")
    for c, recs in rows.items():
        ts = [r["ts"] for r in recs]
        print(f"{c:<16} {statistics.median(ts):8.2f} {min(ts):7.2f} {max(ts):7.2f} {max(ts) / min(ts):7.3f}  "
              + " ".join(f"{v:.1f}" for v in ts))
    paired = {c: recs for c, recs in rows.items() if "+" in c}
    if paired:
        print("paired (one process, tokens interleaved): each setting's speed over the processes, and its ratio to the "
              "first setting of the process, taken token pair by token pair (median of the per-process ratios of "
              "median token times)")
    for c, recs in paired.items():
        first, *rest = c.split("+")
        for other in rest:
            ratios = [statistics.median(r["paired"][first]["ms"]) / statistics.median(r["paired"][other]["ms"])
                      for r in recs]
            for name in (first, other):
                ts = [r["paired"][name]["ts"] for r in recs]
                print(f"  {name:<16} {statistics.median(ts):8.2f} t/s  {min(ts):7.2f}-{max(ts):7.2f}  spread "
                      f"{max(ts) / min(ts):.3f}")
            print(f"  {other} / {first}: {statistics.median(ratios):.3f}x  {min(ratios):.3f}-{max(ratios):.3f}  spread "
                  f"{max(ratios) / min(ratios):.3f}  per process " + " ".join(f"{v:.2f}" for v in ratios))
    loads = [r["load_1min"] for recs in rows.values() for r in recs]
    invol = [sum(t["involuntary"] for t in r["threads"].values()) for recs in rows.values() for r in recs]
    print(f"1-minute load as each process started: {min(loads):.2f}-{max(loads):.2f}; involuntary context switches "
          f"during the timed decodes, per process: {min(invol)}-{max(invol)} (a process preempted by other work "
          "has hundreds)")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "machine": machine.describe(), "rows": rows},
                                              indent=1) + "\n")
    return 0


def _common(args: argparse.Namespace) -> list[str]:
    out = ["--depth", str(args.depth), "--tokens", str(args.tokens), "--warmup", str(args.warmup),
           "--threads", str(args.threads)]
    return out + (["--lib-dir", args.lib_dir] if args.lib_dir else [])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="dense,128:group,128:group:q4_0,128:head")
    ap.add_argument("--processes", type=int, default=8)
    ap.add_argument("--depth", type=int, default=8192)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-busy", type=float, default=0.1, help="before each process, wait until the CPUs were at "
                    "most this busy over 3 s (default 0.1; 1 = never wait)")
    ap.add_argument("--env", action="append", default=[], help="NAME=VALUE for the measuring processes")
    ap.add_argument("--wrap", default="", help="command prefix for each measuring process (taskset, perf record); "
                    "{n} becomes the process's round and setting, for output file names")
    ap.add_argument("--perf-dir", help="record each process's timed decodes with perf (cpu-clock) into DIR/N.data")
    ap.add_argument("--perf", help=argparse.SUPPRESS)
    ap.add_argument("--lib-dir", help="libllama directory (default: the patched CPU build)")
    ap.add_argument("--json")
    ap.add_argument("--fill", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--child", dest="config", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.fill:
        return fill(args)
    if args.config:
        return child(args)
    return parent(args)


if __name__ == "__main__":
    sys.exit(main())
