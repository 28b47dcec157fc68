#!/usr/bin/env python3
"""Sparse-K on an NVIDIA GPU, measured against stock llama.cpp in the same run. Needs no network.

Steps (each can be its own call on a machine that stays up between them; `all` runs them in order):
  build   unpack the device bundle (scripts/make_device_bundle.py) and build stock and patched for CUDA
  check   test-backend-ops for the Sparse-K mask op, CUDA against the CPU
  model   write a random-weight GGUF of a real shape (tokenizer "none") and quantize it
  bench   llama-bench -fa 1: stock, patched dense and patched Sparse-K, interleaved over rounds; JSON + markdown
  ppl     a real model's perplexity on the GPU and on the CPU with the patched build (--ppl-model, --ppl-text)
  profile test-backend-ops perf (CSV) for the Sparse-K selection and score products at Llama-3-8B decode/prefill
          shapes, with each one's time per decode step (x 32 layers) and its share of a stock step (--step-ms)
  fused_harness  the one-launch experiment of issue #18 (scripts/cuda/sparsek_fused_harness.cu): GROUP's decode
          selection scoring the q4_0 copy itself and writing sparse flash attention's gather list; checked against a
          CPU reference, timed for the copy's layout today and head-major
  score_harness  the scoring experiment of issue #18 (scripts/cuda/sparsek_score_harness.cu): how fast the blocks
          that select could score a row from the q4_0 copy of K themselves; checked against a CPU reference
  decode_harness  the sparse decode flash attention kernel (scripts/cuda/sparse_decode_fa_harness.cu against the
          patched tree's fattn-sparse-decode.cuh): one decoded token over gather lists, checked against a CPU
          reference in double, timed at decode shapes warm and cold
  sparq_harness  SparQ's score pass (scripts/cuda/sparq_score_harness.cu): the shipped SPARQ_SCORE kernel against
          a candidate reading the r rows at memory speed, checked against a CPU reference, timed warm and cold
  split   per-layer split of the decode attention path (score / select / sparse FA / rest) from a profile JSON and
          a bench JSON (--profile-json, --bench-json; runs anywhere)
  harness build scripts/cuda/sparsek_select_harness.cu with nvcc against the patched tree's ggml-cuda (seconds, no
          llama.cpp build), check the decode selection kernel against a CPU reference on fresh random data and time
          it (--trace: also each phase's SM clocks in block 0)

Usage: python3 scripts/gpu_bench.py STEP [options]   (CUDA_ARCH=90 by default)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

# the settings' spellings (flags, llama-bench sweep flags) come from the one settings type; it needs only the stdlib
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pysparsek.sparsek.settings import BY_NAME, SCORE_TYPES, SparsekSettings

SHAPES = {
    # name: n_layer, n_embd, n_head, n_head_kv, n_ff, n_vocab, rope_base
    "llama3-8b": (32, 4096, 32, 8, 14336, 128256, 500000.0),
    "llama3.2-1b": (16, 2048, 32, 8, 8192, 128256, 500000.0),
    "tiny": (2, 512, 8, 4, 1024, 4096, 10000.0),  # seconds on a CPU: for checks, not for timings
}
TARGETS = ["llama-bench", "test-backend-ops", "llama-quantize", "llama-perplexity"]
NO_AMX_CMAKE = Path(__file__).resolve().parent.parent / "pysparsek" / "cmake" / "ggml_no_amx.cmake"


def sh(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    print("+ " + " ".join(map(str, cmd)), flush=True)
    return subprocess.run(cmd, check=True, **kw)


def gpu_name(fields: str = "name") -> str:
    return subprocess.run(["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader"],
                          capture_output=True, text=True).stdout.strip()


def write_report(a: argparse.Namespace, stem: str, doc: dict, md: str) -> None:
    """OUT/stem.json and OUT/stem.md, and the markdown on stdout."""
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(doc, indent=2))
    (out / f"{stem}.md").write_text(md)
    print(md, flush=True)


def tree(work: Path, flavor: str) -> Path:
    return work / f"llama.cpp-{flavor}"


def bindir(work: Path, flavor: str) -> Path:
    return work / f"build-{flavor}" / "bin"


def unpack(a: argparse.Namespace) -> Path:
    """The work folder, with the device bundle unpacked into it once."""
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "BUNDLE.json").is_file():
        with tarfile.open(a.bundle) as tar:
            tar.extractall(work, filter="tar")
    return work


def step_build(a: argparse.Namespace) -> None:
    work = unpack(a)
    print((work / "BUNDLE.json").read_text(), flush=True)
    for flavor in a.flavors.split(","):
        t0 = time.time()
        b = work / f"build-{flavor}"
        sh(["cmake", "-S", str(tree(work, flavor)), "-B", str(b), "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release",
            "-DGGML_CUDA=ON", f"-DCMAKE_CUDA_ARCHITECTURES={os.environ.get('CUDA_ARCH', '90')}",
            "-DLLAMA_BUILD_TESTS=ON", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF",
            "-DLLAMA_BUILD_APP=OFF", "-DLLAMA_OPENSSL=OFF", "-DGGML_NATIVE=ON",
            # as pysparsek builds: no AMX kernels (they die with SIGILL at the pin on AMX hosts)
            f"-DCMAKE_PROJECT_ggml_INCLUDE={NO_AMX_CMAKE}"], stdout=subprocess.DEVNULL)
        sh(["cmake", "--build", str(b), "-j", str(a.jobs), "--target", *TARGETS])
        print(f"built {flavor} in {time.time() - t0:.0f} s", flush=True)


# test-backend-ops eval on CUDA against the CPU: the mask op, flash attention's sparse gather (n_kv_max > 0), and
# the quantized products over rows of a few blocks (the score copy's q.k, patch 0013)
CHECK_CASES = [("SPARSEK_MASK", None), ("FLASH_ATTN_EXT", r"n_kv_max=[1-9]"),
               ("MUL_MAT", r"type_a=q[48]_0,type_b=f32,m=(67|129|1000),"),
               # the selection feeding sparse flash attention (the gather lists the selection writes, patch 0030)
               ("SPARSEK_FLASH_ATTN", None),
               # SparQ's score pass over the chosen rows of the component-major copy (patch 0033)
               ("SPARQ_SCORE", None)]


def step_check(a: argparse.Namespace) -> None:
    exe = bindir(Path(a.work), "patched") / "test-backend-ops"
    failed = []
    for op, params in CHECK_CASES:
        cmd = [str(exe), "test", "-b", "CUDA0", "-o", op] + (["-p", params] if params else [])
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **LISTS_ON})
        lines = [line for line in proc.stdout.splitlines() if "tests passed" in line or "FAIL" in line]
        print(f"{op}:", flush=True)
        print("\n".join(lines[-40:]), flush=True)
        if proc.returncode != 0:
            failed.append(op)
    if failed:
        raise SystemExit(f"test-backend-ops failed for {', '.join(failed)}")


def write_random_gguf(path: Path, shape: str, gguf_py: Path) -> None:
    sys.path.insert(0, str(gguf_py))
    import gguf
    import numpy as np

    n_layer, n_embd, n_head, n_head_kv, n_ff, n_vocab, rope_base = SHAPES[shape]
    head_dim = n_embd // n_head
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(131072)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(rope_base)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(n_vocab)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    w.add_tokenizer_model("none")

    def q8(rows: int, cols: int) -> np.ndarray:
        # Q8_0 blocks of 32: an f16 scale, then 32 int8; weights ~ +-0.03
        blocks = np.empty((rows, cols // 32, 34), dtype=np.uint8)
        blocks[:, :, 0:2] = np.frombuffer(np.float16(0.03 / 127).tobytes(), dtype=np.uint8)
        blocks[:, :, 2:] = rng.integers(-127, 128, size=(rows, cols // 32, 32), dtype=np.int8).view(np.uint8)
        return blocks.reshape(rows, cols // 32 * 34)

    def add(name: str, rows: int, cols: int) -> None:
        w.add_tensor(name, q8(rows, cols), raw_dtype=gguf.GGMLQuantizationType.Q8_0)

    add("token_embd.weight", n_vocab, n_embd)
    w.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    add("output.weight", n_vocab, n_embd)
    for il in range(n_layer):
        p = f"blk.{il}."
        w.add_tensor(p + "attn_norm.weight", np.ones(n_embd, dtype=np.float32))
        w.add_tensor(p + "ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
        add(p + "attn_q.weight", n_embd, n_embd)
        add(p + "attn_k.weight", n_head_kv * head_dim, n_embd)
        add(p + "attn_v.weight", n_head_kv * head_dim, n_embd)
        add(p + "attn_output.weight", n_embd, n_embd)
        add(p + "ffn_gate.weight", n_ff, n_embd)
        add(p + "ffn_up.weight", n_ff, n_embd)
        add(p + "ffn_down.weight", n_embd, n_ff)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def step_model(a: argparse.Namespace) -> None:
    work = Path(a.work)
    q8 = work / f"random-{a.shape}-q8_0.gguf"
    out = work / f"random-{a.shape}-{a.quant}.gguf"
    if out.is_file():
        print(f"{out} exists", flush=True)
        return
    t0 = time.time()
    if not q8.is_file():  # written already while the build ran (write_random_gguf alone), or now
        write_random_gguf(q8, a.shape, tree(work, "patched") / "gguf-py")
        print(f"wrote {q8} in {time.time() - t0:.0f} s", flush=True)
    sh([str(bindir(work, "patched") / "llama-quantize"), "--allow-requantize", str(q8), str(out), a.quant],
       stdout=subprocess.DEVNULL)
    q8.unlink()
    print(f"quantized to {out} in {time.time() - t0:.0f} s", flush=True)


def llama_bench(exe: Path, model: Path, args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    """llama-bench -fa 1 -ngl 99 -o json on the model; exits with its stderr's tail if it fails."""
    cmd = [str(exe), "-m", str(model), "-fa", "1", "-ngl", "99", "-o", "json", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"llama-bench failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return proc


def bench_once(exe: Path, model: Path, depths: list[int], extra: list[str], a: argparse.Namespace,
               env: dict | None = None) -> list[dict]:
    proc = llama_bench(exe, model, ["-r", str(a.reps), "-p", str(a.n_prompt), "-n", str(a.n_gen),
                                    "-d", ",".join(map(str, depths)), *extra], env)
    return json.loads(proc.stdout[proc.stdout.find("["):])


def gather_lines(exe: Path, model: Path, depth: int, extra: list[str]) -> list[str]:
    """CUDA's sparse-gather debug log line (once per process) in a short verbose decode: llama-bench mutes logs
    unless -v, and -v logs at debug level, so the timed runs stay quiet and this separate run shows the path."""
    proc = llama_bench(exe, model, ["-r", "1", "-p", "0", "-n", "4", "-d", str(depth), "-v", *extra])
    return [line for line in proc.stderr.splitlines() if "sparse flash attention gather" in line]


PROFILE_CASES = [("SPARSEK_MASK", r"ne=\[(32768|131072),"), ("MUL_MAT", r"m=(32768|131072),n=[14],k=128,"),
                 ("FLASH_ATTN_EXT", r"hsk=128,hsv=128,nh=[18],nr23=\[4,[18]\],kv=(32768|131072),nb=1,"),
                 ("SPARSEK_FLASH_ATTN", None), ("SPARQ_SCORE", None)]
# the selection's gather lists (patch 0030) are opt-in until checked on a GPU: the profile and bench runs set them on,
# and off again for the A/B (flash attention compacts the mask, as before the patch)
LISTS_ON = {"GGML_CUDA_SPARSEK_LIST": "1"}
LISTS_OFF = {"GGML_CUDA_SPARSEK_LIST": "0"}
# labels of a setting's A/B variants in bench rows
VARIANT_SUFFIXES = (" lists off", " MMA gather")
# decode attention through the MMA kernel's gather instead of the sparse decode kernel (fattn-sparse-decode.cuh)
MMA_GATHER = {"GGML_CUDA_SPARSE_DECODE": "0"}
PERF_LINE = re.compile(r"^\s*(\w+)\((.*)\):\s+(\d+) runs -\s+([\d.]+) us/run")


def parse_perf(text: str) -> list[dict]:
    """test-backend-ops perf console lines (its CSV output has no timings in perf mode)."""
    rows = []
    for line in re.sub(r"\x1b\[[0-9;]*m", "", text).splitlines():
        m = PERF_LINE.match(line)
        if m:
            rows.append({"op": m.group(1), "params": m.group(2), "runs": int(m.group(3)), "time_us": float(m.group(4))})
    return rows


def profile_markdown(rows: list[dict], layers: int, step_ms: float) -> str:
    md = [f"test-backend-ops perf on CUDA0; per step = x {layers} layers; share = of a stock decode step of "
          f"{step_ms:.2f} ms (--step-ms)", "", "| op | params | us/run | ms per step | share |",
          "|---|---|---:|---:|---:|"]
    for r in rows:
        per_step = r["time_us"] * layers / 1000
        md.append(f"| {r['op']} | {r['params']} | {r['time_us']:.1f} | {per_step:.2f} | "
                  f"{100 * per_step / step_ms:.0f} % |")
    return "\n".join(md) + "\n"


# ncu's per-kernel duration lines: the kernel's signature, then its metric
NCU_KERNEL = re.compile(r"^\s+(?:void )?(\w+(?:<[^(]*>)?)\(")
NCU_TIME = re.compile(r"gpu__time_duration\.sum\s+(\w+)\s+([\d.]+)")


def ncu_kernel_times(exe: Path, params: str) -> list[dict]:
    """Each selection kernel's duration for one SPARSEK_MASK perf case under ncu (one launch of each kernel; ncu
    runs them alone, at base clocks, with cold caches, so they sum to more than the in-graph time)."""
    proc = subprocess.run(["ncu", "--launch-count", "5", "-k", "regex:sparsek", "--metrics", "gpu__time_duration.sum",
                           str(exe), "perf", "-b", "CUDA0", "-o", "SPARSEK_MASK", "-p", params],
                          capture_output=True, text=True, check=True)
    return parse_ncu(proc.stdout)


def parse_ncu(text: str) -> list[dict]:
    rows, kernel = [], None
    for line in text.splitlines():
        if m := NCU_KERNEL.match(line):
            kernel = m.group(1)
        elif (m := NCU_TIME.search(line)) and kernel:
            scale = {"ns": 1e-3, "us": 1.0, "ms": 1e3}[m.group(1)]
            rows.append({"kernel": kernel, "time_us": float(m.group(2)) * scale})
    return rows


def step_profile(a: argparse.Namespace) -> None:
    exe = bindir(Path(a.work), "patched") / "test-backend-ops"
    rows = []
    runs = [(op, params, LISTS_ON) for op, params in PROFILE_CASES] + [("SPARSEK_FLASH_ATTN", None, LISTS_OFF)]
    for op, params, env in runs:
        cmd = [str(exe), "perf", "-b", "CUDA0", "-o", op] + (["-p", params] if params else [])
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True, env={**os.environ, **env})
        for row in parse_perf(proc.stdout):
            if env is LISTS_OFF:
                row["params"] += ",lists=off"
            rows.append(row)
    md = profile_markdown(rows, SHAPES[a.shape][0], a.step_ms)
    doc = {"gpu": gpu_name(), "shape": a.shape, "step_ms": a.step_ms, "rows": rows}
    if a.ncu:
        # GROUP at n_kv 32768: where the selection's time goes, kernel by kernel
        doc["ncu"] = ncu_kernel_times(exe, r"ne=\[32768,1,32,1\].*mode=1")
        md += "\nncu, SPARSEK_MASK GROUP n_kv 32768 (each kernel alone, base clocks, cold caches):\n\n" + "\n".join(
            f"- {r['kernel']}: {r['time_us']:.1f} us" for r in doc["ncu"]) + "\n"
    write_report(a, "gpu_profile", doc, md)


def score_flags(st: str) -> tuple[list[str], list[str], str]:
    """A --score-types entry as (llama-bench flags, llama.cpp common flags, label suffix): none, f16, q8_0, q4_0 (a
    copy of K in that type), or sparqR / sparqR-shared (SparQ from R components, each query head's own or shared by
    a KV head's query heads)."""
    m = re.fullmatch(r"sparq(\d+)(-shared)?", st)
    if m:
        s = SparsekSettings(score_type="none", sparq_r=int(m.group(1)), sparq_shared=int(bool(m.group(2))))
        suffix = f" sparq r={m.group(1)}" + (" shared" if m.group(2) else "")
    elif st in SCORE_TYPES:
        s = SparsekSettings(score_type=st)
        suffix = "" if st == "none" else f" {st} copy"
    else:
        raise SystemExit(f"unknown score type {st!r}: {', '.join(SCORE_TYPES)}, sparqR or sparqR-shared")
    given = s.given()
    bench = [x for name, value in given.items() for x in (BY_NAME[name].bench_flag, str(value))]
    # llama-bench sweeps every value given; the common tools get only what differs from llama.cpp's defaults
    common = SparsekSettings(**{n: v for n, v in given.items() if v != BY_NAME[n].default}).flags()
    return bench, common, suffix


def step_bench(a: argparse.Namespace) -> None:
    work = Path(a.work)
    model = work / f"random-{a.shape}-{a.quant}.gguf"
    depths = [int(d) for d in a.depths.split(",")]
    # (flavor, llama-bench flags, label, environment)
    configs = [("stock", [], "stock", LISTS_ON), ("patched", ["-sk", "0"], "dense", LISTS_ON)]
    if "stock" not in a.flavors.split(","):
        configs = configs[1:]  # the patched build alone: ratios against its dense run (patched-off equals stock)
    base_label = configs[0][2]
    policy = ["-skmu", str(a.max_ubatch)] if a.max_ubatch else []
    for k in [int(v) for v in a.topk.split(",")]:
        for mode in a.modes.split(","):
            for st in a.score_types.split(","):
                bench_flags, _, suffix = score_flags(st)
                label = f"K={k} {mode}{suffix}" + (f" ub<={a.max_ubatch}" if a.max_ubatch else "")
                flags = ["-sk", str(k), "-skm", mode, *bench_flags, *policy]
                configs.append(("patched", flags, label, LISTS_ON))
                if a.lists_ab:
                    configs.append(("patched", flags, label + VARIANT_SUFFIXES[0], LISTS_OFF))
                if a.decode_ab:
                    configs.append(("patched", flags, label + VARIANT_SUFFIXES[1], {**LISTS_ON, **MMA_GATHER}))
    samples: dict[tuple[str, str, int], list[float]] = {}
    raw: list[dict] = []
    for r in range(a.rounds):
        for flavor, extra, label, env in configs:
            t0 = time.time()
            for rec in bench_once(bindir(work, flavor) / "llama-bench", model, depths, extra, a, {**os.environ, **env}):
                test = f"pp{rec['n_prompt']}" if rec["n_prompt"] else f"tg{rec['n_gen']}"
                samples.setdefault((label, test, int(rec["n_depth"])), []).append(float(rec["avg_ts"]))
                rec["config"] = label
                rec["round"] = r
                raw.append(rec)
            print(f"round {r + 1}/{a.rounds} {label}: {time.time() - t0:.0f} s", flush=True)
    rows = []
    for (label, test, depth), ts in sorted(samples.items(), key=lambda kv: (kv[0][1], kv[0][2])):
        base = samples[(base_label, test, depth)]
        ratios = [x / b for x, b in zip(ts, base, strict=False)]
        rows.append({"config": label, "test": test, "depth": depth, "tokens_per_s": statistics.median(ts),
                     "baseline": base_label,
                     "stock_tokens_per_s": statistics.median(base), "ratio_vs_stock": statistics.median(ratios),
                     "ratio_min": min(ratios), "ratio_max": max(ratios), "samples_ts": ts})
    gpu = gpu_name("name,driver_version")
    doc = {"gpu": gpu, "shape": a.shape, "quant": a.quant, "rounds": a.rounds, "reps": a.reps, "rows": rows,
           "llama_bench_records": raw}
    md = [f"GPU: {gpu}; model: random {a.shape} {a.quant}; llama-bench -fa 1, {a.rounds} interleaved rounds x "
          f"{a.reps} reps; ratio = median of same-round ratios vs {base_label}"
          + (" (patched build, Sparse-K off: equals stock)" if base_label == "dense" else ""), "",
          f"| config | test | depth | t/s | {base_label} t/s | ratio | spread |",
          "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        md.append(f"| {row['config']} | {row['test']} | {row['depth']} | {row['tokens_per_s']:.2f} | "
                  f"{row['stock_tokens_per_s']:.2f} | {row['ratio_vs_stock']:.3f} | "
                  f"{row['ratio_min']:.3f}-{row['ratio_max']:.3f} |")
    if a.gather_check:
        gathers = {label: gather_lines(bindir(work, flavor) / "llama-bench", model, depths[0], extra)
                   for flavor, extra, label, _env in configs if flavor == "patched"}
        doc["sparse_gather_log_lines"] = {label: len(lines) for label, lines in gathers.items()}
        doc["sparse_gather_examples"] = {label: lines[:2] for label, lines in gathers.items()}
        md += ["", f"sparse flash-attention gather log lines in a verbose tg4 at depth {depths[0]}: "
               f"{doc['sparse_gather_log_lines']}"]
    write_report(a, "gpu_bench", doc, "\n".join(md) + "\n")


def perf_time(rows: list[dict], op: str, *needles: str) -> float:
    """The test-backend-ops perf time of the one `op` case whose params contain every needle (us per run; the
    median where the same case ran more than once)."""
    hits = [r for r in rows if r["op"] == op and all(n in r["params"] for n in needles)]
    if len({r["params"] for r in hits}) != 1:
        raise SystemExit(f"split: {len({r['params'] for r in hits})} {op} perf cases match {needles}, expected one")
    return statistics.median(r["time_us"] for r in hits)


def decode_split(profile: dict, bench: dict, depth: int, top_k: int, score_type: str, n_layer: int) -> dict:
    """Per-layer split of Sparse-K's decode attention path (GROUP, one token, Llama-3-8B heads): each op's time
    alone (test-backend-ops perf rows of `profile`) against the path's cost in the decode graph, which is dense
    flash attention plus the measured per-layer step difference (tg rows of `bench`, same call vs stock); `rest`
    is what the graph spends beyond the ops alone (other kernels of the path, launch gaps, the copy's upkeep)."""
    rows = profile["rows"]
    kv = f"ne=[{depth},1,32,1]"
    score = (perf_time(rows, "MUL_MAT", "type_a=q4_0,", f"m={depth},n=4,", "per=[0,1,2,3]") if score_type == "q4_0"
             else perf_time(rows, "MUL_MAT", "type_a=f16,", f"m={depth},n=4,"))
    select = perf_time(rows, "SPARSEK_MASK", kv, "mode=1,", "sets=1")
    fa_sparse = perf_time(rows, "FLASH_ATTN_EXT", "nh=1,nr23=[4,8]", f"kv={depth},", f"n_kv_max={depth // 32}")
    fa_dense = perf_time(rows, "FLASH_ATTN_EXT", "nh=8,nr23=[4,1]", f"kv={depth},", "n_kv_max=0")
    # selection + sparse FA as one graph (SPARSEK_FLASH_ATTN), with the selection's gather lists and without
    pair: dict[bool, float | None] = {}
    for off in (False, True):
        times = [r["time_us"] for r in rows if r["op"] == "SPARSEK_FLASH_ATTN" and f"n_kv={depth}," in r["params"]
                 and ("lists=off" in r["params"]) == off]
        pair[off] = statistics.median(times) if times else None
    label = f"K={top_k} group" + (" q4_0 copy" if score_type == "q4_0" else "")
    # the default path only: A/B variants of a setting (" lists off", " MMA gather") would overwrite it
    tg = {r["config"].split(" ub<=")[0]: r for r in bench["rows"] if r["test"].startswith("tg") and r["depth"] == depth
          and not r["config"].endswith(VARIANT_SUFFIXES)}
    # stock, or the patched build's dense run (equals stock) where the bench built the patched tree alone
    base = next((r["baseline"] for r in bench["rows"] if r.get("baseline")), "stock")
    if label not in tg or base not in tg:
        raise SystemExit(f"split: the bench has no tg rows for {label!r} and {base} at depth {depth}")
    step_us = {k: 1e6 / tg[k]["tokens_per_s"] for k in (base, label)}
    path_in_graph = fa_dense + (step_us[label] - step_us[base]) / n_layer
    ops = score + select + fa_sparse
    return {"depth": depth, "top_k": top_k, "config": label, "score_us": score, "select_us": select,
            "fa_sparse_us": fa_sparse, "ops_sum_us": ops, "fa_dense_us": fa_dense, "path_in_graph_us": path_in_graph,
            "rest_us": path_in_graph - ops, "step_us": step_us, "n_layer": n_layer, "baseline": base,
            "select_fa_us": pair[False], "select_fa_lists_off_us": pair[True]}


def step_split(a: argparse.Namespace) -> None:
    """Where the decode attention path's time goes, from a `profile` JSON and a `bench` JSON of the same card."""
    profile = json.loads(Path(a.profile_json).read_text())
    bench = json.loads(Path(a.bench_json).read_text())
    depth, top_k = int(a.depths.split(",")[-1]), int(a.topk.split(",")[0])
    splits = [decode_split(profile, bench, depth, top_k, st, SHAPES[a.shape][0]) for st in ("none", "q4_0")]
    md = [f"Per layer, {profile['gpu']} (profile) / {bench['gpu']} (bench), depth {depth}, one decoded token: each op "
          "alone (test-backend-ops perf) vs the path in the decode graph (dense FA + per-layer step difference vs "
          "stock, llama-bench tg)", "",
          "| config | score | select | sparse FA | select + FA, one graph (lists off) | ops alone | path in graph | "
          "rest | dense FA |",
          "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]

    def us(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    for d in splits:
        md.append(f"| {d['config']} | {d['score_us']:.1f} | {d['select_us']:.1f} | {d['fa_sparse_us']:.1f} | "
                  f"{us(d['select_fa_us'])} ({us(d['select_fa_lists_off_us'])}) | "
                  f"{d['ops_sum_us']:.1f} | {d['path_in_graph_us']:.1f} | {d['rest_us']:.1f} | "
                  f"{d['fa_dense_us']:.1f} |")
    write_report(a, "gpu_split", {"splits": splits}, "\n".join(md) + "\n")


HARNESS = Path(__file__).resolve().parent / "cuda" / "sparsek_select_harness.cu"
SCORE_HARNESS = Path(__file__).resolve().parent / "cuda" / "sparsek_score_harness.cu"
FUSED_HARNESS = Path(__file__).resolve().parent / "cuda" / "sparsek_fused_harness.cu"
DECODE_HARNESS = Path(__file__).resolve().parent / "cuda" / "sparse_decode_fa_harness.cu"
SPARQ_HARNESS = Path(__file__).resolve().parent / "cuda" / "sparq_score_harness.cu"


def run_harness(a: argparse.Namespace, exe: Path, nvcc_args: list[str]) -> None:
    """nvcc the harness, run it, keep its output in OUT/<exe>.txt; exits if the harness reports a failed check."""
    sh(["nvcc", "-O2", "-std=c++17", f"-arch=sm_{os.environ.get('CUDA_ARCH', '90')}", "-lineinfo", *nvcc_args,
        "-o", str(exe)])
    proc = subprocess.run([str(exe)], capture_output=True, text=True)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / exe.with_suffix(".txt").name).write_text(proc.stdout + proc.stderr)
    print(proc.stdout + proc.stderr, flush=True)
    if proc.returncode != 0:
        raise SystemExit(f"harness failed (exit {proc.returncode})")


def ggml_includes(work: Path) -> list[str]:
    """nvcc -I flags for the patched tree's ggml headers and ggml-cuda sources (the harnesses include kernels)."""
    ggml = tree(work, "patched") / "ggml"
    return [f"-I{ggml / 'include'}", f"-I{ggml / 'src'}", f"-I{ggml / 'src' / 'ggml-cuda'}"]


def step_harness(a: argparse.Namespace) -> None:
    work = unpack(a)
    ggml = tree(work, "patched") / "ggml"
    exe = work / ("sparsek_select_harness_trace" if a.trace else "sparsek_select_harness")
    run_harness(a, exe, [*(["-DSPARSEK_CL_TRACE"] if a.trace else []), f"-I{ggml / 'include'}",
                         f"-I{ggml / 'src'}", f"-I{ggml / 'src' / 'ggml-cuda'}", str(HARNESS)])


def step_score_harness(a: argparse.Namespace) -> None:
    """The scoring experiment (scripts/cuda/sparsek_score_harness.cu): self-contained, no bundle needed."""
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    run_harness(a, work / "sparsek_score_harness", [str(SCORE_HARNESS)])


def step_fused_harness(a: argparse.Namespace) -> None:
    """The one-launch score + select + gather list experiment (scripts/cuda/sparsek_fused_harness.cu), built against
    the patched tree's ggml-cuda helpers (sparsek-cluster.cuh)."""
    work = unpack(a)
    ggml = tree(work, "patched") / "ggml"
    run_harness(a, work / "sparsek_fused_harness", [f"-I{ggml / 'include'}", f"-I{ggml / 'src'}",
                                                    f"-I{ggml / 'src' / 'ggml-cuda'}", str(FUSED_HARNESS)])


def step_decode_harness(a: argparse.Namespace) -> None:
    """The sparse decode flash attention kernel (scripts/cuda/sparse_decode_fa_harness.cu against the patched tree's
    fattn-sparse-decode.cuh): checked against a CPU reference, then timed at decode shapes."""
    work = unpack(a)
    run_harness(a, work / "sparse_decode_fa_harness", [*ggml_includes(work), str(DECODE_HARNESS)])


def step_sparq_harness(a: argparse.Namespace) -> None:
    """SparQ's score pass (scripts/cuda/sparq_score_harness.cu): the shipped SPARQ_SCORE kernel and a candidate that
    reads the r rows at memory speed, both checked against a CPU reference, timed at decode shapes."""
    work = unpack(a)
    run_harness(a, work / "sparq_score_harness", [*ggml_includes(work), str(SPARQ_HARNESS)])


PPL_LINE = re.compile(r"Final estimate: PPL = ([\d.]+) \+/- ([\d.]+)")


def step_ppl(a: argparse.Namespace) -> None:
    """A real model's perplexity with the patched build on the GPU (-ngl 99) and on the CPU (-ngl 0), -fa on.

    Sparse-K's CUDA path must give the CPU's figures (same kept cells, FA within float rounding). The GGUF may
    travel in parts (`split -b 47M`, each part in its own call, reassembled with cat): --ppl-model names the file.
    """
    exe = bindir(Path(a.work), "patched") / "llama-perplexity"
    configs: list[tuple[str, list[str]]] = [("dense", [])]
    for k in [int(v) for v in a.topk.split(",")]:
        for mode in a.modes.split(","):
            for st in a.score_types.split(","):
                _, common_flags, suffix = score_flags(st)
                configs.append((f"K={k} {mode}{suffix}",
                                ["--sparsek-topk", str(k), "--sparsek-mode", mode, *common_flags]))
    rows = []
    for label, extra in configs:
        row: dict = {"config": label}
        for dev, ngl in (("gpu", "99"), ("cpu", "0")):
            proc = subprocess.run([str(exe), "-m", a.ppl_model, "-f", a.ppl_text, "-c", "512", "--chunks",
                                   str(a.ppl_chunks), "-b", "512", "-fa", "on", "-ngl", ngl, *extra],
                                  capture_output=True, text=True)
            m = PPL_LINE.search(proc.stdout + proc.stderr)
            row[dev] = float(m.group(1)) if m else None
            if m is None:
                log = (proc.stdout + proc.stderr).splitlines()
                tail = [line for line in log if "rror" in line or "Sparse-K" in line]
                row[f"{dev}_error"] = tail[-1] if tail else f"exit {proc.returncode}"
        rows.append(row)
        print(row, flush=True)
    gpu = gpu_name()
    md = [f"llama-perplexity -c 512 --chunks {a.ppl_chunks} -fa on, patched build; GPU: {gpu} (-ngl 99) vs its host "
          f"CPU (-ngl 0); model {Path(a.ppl_model).name}", "", "| config | GPU PPL | CPU PPL | GPU/CPU |",
          "| --- | --- | --- | --- |"]
    for r in rows:
        ratio = f"{r['gpu'] / r['cpu']:.5f}" if r.get("gpu") and r.get("cpu") else r.get("gpu_error", "-")
        md.append(f"| {r['config']} | {r['gpu']} | {r['cpu']} | {ratio} |")
    write_report(a, "gpu_ppl", {"gpu": gpu, "rows": rows}, "\n".join(md) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=["build", "check", "model", "bench", "profile", "ppl", "harness", "score_harness",
                                     "fused_harness", "decode_harness", "sparq_harness", "split", "all"])
    ap.add_argument("--bundle", default=".devbundle/llama.cpp-bundle.tar.xz")
    ap.add_argument("--work", default="/tmp/pysparsek-gpu")
    ap.add_argument("--flavors", default="patched,stock")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 16)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="llama3-8b")
    ap.add_argument("--quant", default="Q4_K_M")
    ap.add_argument("--depths", default="0,8192,32768")
    ap.add_argument("--topk", default="256,1024,4096")
    ap.add_argument("--modes", default="token,group,head")
    ap.add_argument("--score-types", default="none", help="comma-separated: none (score from K), f16, q8_0, q4_0, "
                    "sparqR, sparqR-shared (SparQ from R components)")
    ap.add_argument("--max-ubatch", type=int, default=0, help="Sparse-K only for ubatches of <= N tokens (0: all)")
    ap.add_argument("--step-ms", type=float, default=1000 / 174.4, help="profile: a stock decode step in ms "
                    "(default: 1000/174.4, stock tg64 at depth 32768 on the H100, results/gpu-h100-score-copy.md)")
    ap.add_argument("--n-prompt", type=int, default=512)
    ap.add_argument("--n-gen", type=int, default=64)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--ncu", action="store_true", help="profile: also each selection kernel's time under ncu")
    ap.add_argument("--trace", action="store_true", help="harness: also each phase's SM clocks (block 0 of row 0)")
    ap.add_argument("--lists-ab", action="store_true",
                    help="bench: each Sparse-K config with the selection's gather lists (GGML_CUDA_SPARSEK_LIST=1, "
                         "as every run here) and also without (sparse flash attention compacts the mask)")
    ap.add_argument("--decode-ab", action="store_true",
                    help="bench: each Sparse-K setting also with decode attention through the MMA kernel's gather "
                         "(GGML_CUDA_SPARSE_DECODE=0) instead of the sparse decode kernel")
    ap.add_argument("--gather-check", action="store_true",
                    help="bench: also a short verbose decode per patched config, counting sparse FA gather log lines")
    ap.add_argument("--profile-json", help="split: a profile step's gpu_profile.json")
    ap.add_argument("--bench-json", help="split: a bench step's gpu_bench.json (group exact and q4_0 copy, stock)")
    ap.add_argument("--ppl-model", help="ppl: a real model's GGUF")
    ap.add_argument("--ppl-text", help="ppl: a text file")
    ap.add_argument("--ppl-chunks", type=int, default=12)
    ap.add_argument("--out", default=os.environ.get("OUT", "reports/gpu"))
    a = ap.parse_args()
    steps = ["build", "check", "model", "bench"] if a.step == "all" else [a.step]
    for s in steps:
        globals()[f"step_{s}"](a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
