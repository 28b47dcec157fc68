"""`pysparsek bench`: what Sparse-K costs in quality and buys in speed, for one model on this machine.

Quality (llama-perplexity): stock, patched with Sparse-K off (must be identical), and each K: PPL, KL divergence
against stock, top-1 agreement. Speed (llama-bench -o json): dense and each K, prompt processing and generation at
each depth, interleaved over rounds so drift hits all of them; ratios are medians of same-round ratios.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from pysparsek import __version__, compare, machine, patches, speed
from pysparsek import build as builds
from pysparsek.models import sha256_file
from pysparsek.perplexity import Settings
from pysparsek.pin import LLAMA_CPP_PIN

SCHEMA = "pysparsek.bench/1"


@dataclass
class BenchOptions:
    model: Path
    text: Path
    topks: list[int]
    ctx: int = 512
    chunks: int = 8
    threads: int | None = None
    ngl: int = 0
    flash_attn: bool = True
    batch: int = 2048
    ubatch: int = 512
    window: int = 0
    stride: int = 0
    sinks: int = 0
    mode: str = "head"
    depths: list[int] = field(default_factory=lambda: [0, 8192])
    n_prompt: int = 512
    n_gen: int = 32
    reps: int = 2
    rounds: int = 2
    backend: str = "cpu"
    quiet: bool = False
    skip_speed: bool = False
    score_type: str = "none"     # the K copy Sparse-K scores from: none (K itself), f16, q8_0, q4_0
    max_ubatch: int = 0          # Sparse-K only for ubatches of at most this many tokens (0: all)
    regime: str = "prompt"       # quality: prompt (llama-perplexity) or decode (dense prompt, then decoded tokens)
    prompt_tokens: int = 1024    # decode regime: dense prompt per chunk
    decode_tokens: int = 256     # decode regime: tokens decoded one at a time per chunk
    rpc: str = ""                # HOST:PORT[,...]: the patched runs put their layers on these ggml-rpc-servers


def remote_args(o: BenchOptions) -> tuple[int, tuple[str, ...]]:
    """-ngl and the extra tool arguments for the patched runs: with --rpc the layers go to the servers (-ngl 0
    would leave them all local, so it becomes 99)."""
    if not o.rpc:
        return o.ngl, ()
    from pysparsek import rpc

    endpoints = ",".join(rpc.parse_endpoints(o.rpc))
    return o.ngl or 99, ("--rpc", endpoints)


def _settings(o: BenchOptions) -> Settings:
    return Settings(ctx=o.ctx, chunks=o.chunks, batch=o.batch, ubatch=o.ubatch, threads=o.threads,
                    flash_attn="on" if o.flash_attn else "off", window=o.window or None, stride=o.stride or None,
                    sinks=o.sinks or None, mode=o.mode,
                    score_type=None if o.score_type == "none" else o.score_type, max_ubatch=o.max_ubatch or None)


def quality_json(c: compare.Comparison) -> dict[str, Any]:
    def ppl(r) -> dict[str, Any]:
        return {"ppl": r.ppl, "ppl_stderr": float(r.final_stderr), "chunks": [float(v) for v in r.chunks]}

    dense = c.stock.ppl
    return {
        "stock": ppl(c.stock),
        "patched_off": ppl(c.disabled),
        "identical": c.identical,
        "sparse": [{"top_k": row.topk, "ppl": row.result.ppl, "ppl_stderr": float(row.result.final_stderr),
                    "delta_ppl_pct": 100.0 * (row.result.ppl - dense) / dense, "kl_mean": row.result.kld_mean,
                    "kl_stderr": row.result.kld_stderr, "top1_agreement_pct": row.result.same_top_pct}
                   for row in c.sparse],
    }


def decode_quality_json(results: list[Any]) -> dict[str, Any]:
    """Decode-regime results in the shape of quality_json (dense is the patched library with Sparse-K off)."""
    dense = results[0]
    doc = {"ppl": dense.ppl, "ppl_stderr": None, "chunks": [], "decoded_tokens": dense.n_tokens}
    return {
        "regime": "decode",
        "stock": doc,
        "patched_off": doc,
        "identical": True,  # one run: dense here is the patched library with Sparse-K off
        "sparse": [{"top_k": r.setting.top_k, "score_type": r.setting.score_type, "ppl": r.ppl, "ppl_stderr": None,
                    "delta_ppl_pct": 100.0 * (r.ppl - dense.ppl) / dense.ppl, "kl_mean": r.kl_mean,
                    "kl_stderr": r.kl_stderr, "top1_agreement_pct": r.top1_agreement_pct}
                   for r in results[1:]],
    }


def decode_quality(o: BenchOptions) -> dict[str, Any]:
    from pysparsek import decode_regime

    settings = [decode_regime.Setting(k, o.mode, o.window, o.stride, o.sinks, o.score_type) for k in o.topks]
    bar = tqdm(total=o.chunks * (len(settings) + 1), desc="decode regime", unit="run", disable=o.quiet)

    def step(label: str) -> None:
        bar.update()
        bar.set_postfix_str(label)

    results = decode_regime.measure(o.model, o.text, settings, prompt=o.prompt_tokens, decode=o.decode_tokens,
                                    chunks=o.chunks, threads=o.threads, flash_attn=o.flash_attn, ngl=o.ngl,
                                    progress=step)
    bar.close()
    return decode_quality_json(results)


def speed_json(rows: list[speed.Ratio], meas: list[speed.Measurement]) -> dict[str, Any]:
    dense = [m for m in meas if m.config.top_k == 0]
    return {
        "dense": [{"test": m.test, "depth": m.depth, "tokens_per_s": m.median_ts, "samples_ts": m.samples_ts}
                  for m in dense],
        "sparse": [{"top_k": r.config.top_k, "mode": r.config.mode, "window": r.config.window, "test": r.test,
                    "depth": r.depth, "tokens_per_s": r.ts, "dense_tokens_per_s": r.dense_ts, "ratio": r.ratio,
                    "ratio_min": r.spread[0], "ratio_max": r.spread[1],
                    "samples_ts": next(m.samples_ts for m in meas if (m.config, m.test, m.depth) ==
                                       (r.config, r.test, r.depth))}
                   for r in rows if r.config.top_k > 0],
    }


def run(o: BenchOptions) -> dict[str, Any]:
    """Measure everything and return the results document (see docs in README, 'results.json')."""
    if o.backend == "cuda" and not machine.gpus():
        raise builds.BuildError("backend 'cuda' requested, but no NVIDIA GPU is visible here (nvidia-smi lists none)")
    ngl, remote = remote_args(o)
    if remote and o.regime == "decode":
        raise builds.BuildError("--rpc applies to the prompt regime (llama-perplexity) and the speed runs; the decode "
                                "regime runs through llama-cpp-python in this process")
    patched = builds.require("patched", o.backend)
    builds.require("stock", o.backend)
    if o.regime == "decode":
        if o.backend != "cpu":
            raise builds.BuildError("the decode regime runs through llama-cpp-python on the CPU build only")
        quality_doc = decode_quality(o)
    else:
        # a stock client cannot use patched servers (patch 0014 refuses it), so stock runs locally: the identity
        # check then also holds the remote patched run to the local stock one
        quality_doc = quality_json(compare.run(o.model, o.text, _settings(o), o.topks, backend=o.backend,
                                               quiet=o.quiet, patched_extra=("-ngl", str(ngl), *remote)))

    records: list[dict[str, Any]] = []
    speed_doc: dict[str, Any] = {"dense": [], "sparse": []}
    if not o.skip_speed:
        configs = [speed.Config()] + [speed.Config(k, o.mode, o.window, o.score_type, o.max_ubatch) for k in o.topks]
        bar = tqdm(total=o.rounds * len(speed.batches(configs)), desc="llama-bench", unit="run", disable=o.quiet)

        started = [False]

        def step(label: str) -> None:
            # called as each run starts: the previous one has finished
            if started[0]:
                bar.update()
            started[0] = True
            bar.set_postfix_str(label)

        meas = speed.interleaved(patched, o.model, configs, rounds=o.rounds, n_prompt=o.n_prompt, n_gen=o.n_gen,
                                 depths=o.depths, reps=o.reps, threads=o.threads, flash_attn=o.flash_attn,
                                 ngl=ngl, progress=step, extra=remote)
        bar.update()
        bar.close()
        speed_doc = speed_json(speed.ratios(meas), meas)
        records = [rec for m in meas for rec in m.records]

    copy = None
    if o.score_type != "none" and o.backend == "cpu":
        from pysparsek import score_copy

        # the largest context llama-bench creates here
        copy = score_copy.measure(o.model, max(o.depths) + o.n_prompt + o.n_gen, o.score_type)

    options = {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(o).items()}
    return {
        "schema": SCHEMA,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "pysparsek_version": __version__,
        "machine": machine.describe(),
        "backend": o.backend,
        "llama_cpp_pin": LLAMA_CPP_PIN,
        "patch_series_sha256": patches.series_hash(),
        "model": {"path": str(o.model), "sha256": sha256_file(o.model), "size_bytes": o.model.stat().st_size},
        "text": {"path": str(o.text), "sha256": sha256_file(o.text)},
        "options": options,
        "score_copy": copy,
        "quality": quality_doc,
        "speed": speed_doc,
        "llama_bench_records": records,
    }


def quality_table(doc: dict[str, Any]) -> str:
    q = doc["quality"]
    lines = []
    if q.get("regime") == "decode":
        o = doc["options"]
        lines.append(f"decode regime: per chunk {o['prompt_tokens']} prompt tokens (dense), then {o['decode_tokens']} "
                     f"tokens decoded one at a time; {q['stock']['decoded_tokens']} decoded tokens in all")
    lines += [f"{'K':>8} {'PPL':>10} {'ΔPPL %':>8} {'KL div':>10} {'top-1 %':>8}",
              f"{'dense':>8} {q['stock']['ppl']:>10.4f} {'':>8} {'':>10} {'':>8}"]
    for s in q["sparse"]:
        lines.append(f"{s['top_k']:>8} {s['ppl']:>10.4f} {s['delta_ppl_pct']:>+8.2f} {s['kl_mean']:>10.6f} "
                     f"{s['top1_agreement_pct']:>8.2f}")
    if q.get("regime") == "decode":
        lines.append("dense = the patched library with Sparse-K off (bit-identical to stock, tests/test_identity.py)")
    else:
        lines.append("patched with Sparse-K off vs stock: " + ("identical" if q["identical"] else "DIFFERENT"))
    return "\n".join(lines)


def speed_table(doc: dict[str, Any]) -> str:
    sp = doc["speed"]
    if not sp["dense"]:
        return "(speed not measured)"
    lines = [f"{'K':>8} {'mode':>6} {'test':>6} {'depth':>6} {'t/s':>9} {'dense t/s':>10} {'ratio':>7} "
             f"{'spread':>13}"]
    for s in sorted(sp["sparse"], key=lambda s: (s["test"], s["depth"], s["top_k"])):
        spread = f"{s['ratio_min']:>6.3f}-{s['ratio_max']:<6.3f}"
        lines.append(f"{s['top_k']:>8} {s['mode']:>6} {s['test']:>6} {s['depth']:>6} {s['tokens_per_s']:>9.2f} "
                     f"{s['dense_tokens_per_s']:>10.2f} {s['ratio']:>7.3f} {spread}")
    return "\n".join(lines)


def headline(doc: dict[str, Any]) -> str:
    """Where Sparse-K pays: each K's ratio to dense at the deepest depth measured, decode and prompt."""
    sparse = doc["speed"]["sparse"]
    if not sparse:
        return ""
    depth = max(s["depth"] for s in sparse)
    lines = [f"at depth {depth} (tokens already in the KV cache), Sparse-K vs dense on this machine:"]
    for k in sorted({s["top_k"] for s in sparse}):
        parts = []
        for s in sorted((s for s in sparse if s["top_k"] == k and s["depth"] == depth), key=lambda s: s["test"],
                        reverse=True):
            kind = "decode" if s["test"].startswith("tg") else "prompt"
            parts.append(f"{kind} ({s['test']}) {s['ratio']:.2f}× ({s['ratio_min']:.2f}-{s['ratio_max']:.2f})")
        q = next((r for r in doc["quality"]["sparse"] if r["top_k"] == k), None)
        quality = f"; PPL {q['delta_ppl_pct']:+.2f} %, KL {q['kl_mean']:.4f}" if q else ""
        lines.append(f"  K={k} {sparse[0]['mode']}: " + ", ".join(parts) + quality)
    return "\n".join(lines)


def header(doc: dict[str, Any]) -> str:
    o = doc["options"]
    return (f"model {Path(doc['model']['path']).name} (sha256 {doc['model']['sha256'][:12]}), "
            f"text {Path(doc['text']['path']).name}, ctx {o['ctx']}, {o['chunks']} chunks, "
            f"flash attention {'on' if o['flash_attn'] else 'off'}, mode {o['mode']}, "
            f"score type {o.get('score_type', 'none')}, max ubatch {o.get('max_ubatch', 0) or 'all'}, "
            f"quality regime {o.get('regime', 'prompt')}, backend {doc['backend']}"
            + (f", patched runs on RPC servers {o['rpc']}" if o.get("rpc") else "") + "\n"
            f"machine: {machine.one_line(doc['machine'])}\n"
            f"llama.cpp {doc['llama_cpp_pin'][:12]} + patch series {doc['patch_series_sha256'][:12]}"
            + (f"\n{score_copy_text(doc['score_copy'])}" if doc.get("score_copy") else ""))


def score_copy_text(s: dict[str, Any]) -> str:
    from pysparsek import score_copy

    return score_copy.describe(s)


def write_report(doc: dict[str, Any], out: Path) -> list[Path]:
    """results.json, report.md and the plots in out/."""
    from pysparsek import plots

    out.mkdir(parents=True, exist_ok=True)
    written = [out / "results.json", out / "report.md"]
    (out / "results.json").write_text(json.dumps(doc, indent=2) + "\n")
    written += plots.write(doc, out)
    md = ["# pysparsek bench", "", "```", header(doc), "```", "", "## Quality", "", "```", quality_table(doc), "```",
          "", "## Speed (ratio = Sparse-K t/s / dense t/s, median of interleaved rounds; spread = min-max)", "",
          "```", speed_table(doc), "```", "", "```", headline(doc), "```", ""]
    md += [f"![{p.stem}]({p.name})" for p in written if p.suffix == ".png"]
    (out / "report.md").write_text("\n".join(md) + "\n")
    return written
