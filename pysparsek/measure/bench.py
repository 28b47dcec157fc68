"""`pysparsek bench`: what Sparse-K costs in quality and buys in speed, for one model on this machine.

Quality (llama-perplexity): stock, patched with Sparse-K off (must be identical), and each K: PPL, KL divergence
against stock, top-1 agreement. Speed (llama-bench -o json): dense, each K and dense with each quantized K/V cache
(`cache_types`), prompt processing and generation at each depth, each in `processes` separate llama-bench processes
(rounds, interleaved so drift hits all of them): every setting's median t/s and spread (max/min) over the processes;
ratios are medians of same-round ratios. Both use exactly the same Sparse-K setting (`BenchOptions.sparsek` at each
K). Tables and files: `report`.
"""

from __future__ import annotations

import datetime

from tqdm import tqdm

from pysparsek import __version__
from pysparsek.data.models import sha256_file
from pysparsek.llamacpp import build as builds
from pysparsek.llamacpp import patches
from pysparsek.llamacpp.pin import LLAMA_CPP_PIN
from pysparsek.measure import compare, machine, speed
from pysparsek.measure.perplexity import Settings
from pysparsek.measure.results import (
    BenchOptions,
    BenchResult,
    Perplexity,
    Quality,
    QualityRow,
)


def _settings(o: BenchOptions) -> Settings:
    return Settings(ctx=o.ctx, chunks=o.chunks, batch=o.batch, ubatch=o.ubatch, threads=o.threads,
                    flash_attn="on" if o.flash_attn else "off", sparsek=o.sparsek)


def quality_of(c: compare.Comparison) -> Quality:
    def ppl(r: compare.PerplexityResult) -> Perplexity:
        return Perplexity(r.ppl, float(r.final_stderr), [float(v) for v in r.chunks])

    dense = c.stock.ppl
    return Quality(ppl(c.stock), ppl(c.disabled), c.identical, [
        QualityRow(row.topk, row.result.ppl, float(row.result.final_stderr), 100.0 * (row.result.ppl - dense) / dense,
                   row.result.kld_mean, row.result.kld_stderr, row.result.same_top_pct, cache_type=row.cache_type)
        for row in c.sparse])


def decode_quality(o: BenchOptions) -> Quality:
    """Decode-regime quality in the shape of the prompt regime's (dense is the patched library with Sparse-K off,
    in the same process, so stock and patched_off are one run)."""
    from pysparsek.measure import decode_regime

    settings = ([decode_regime.Setting(o.at(k)) for k in o.topks]
                + [decode_regime.Setting(cache_type=t) for t in o.cache_types])
    bar = tqdm(total=o.chunks * (len(settings) + 1), desc="decode regime", unit="run", disable=o.quiet)

    def step(label: str) -> None:
        bar.update()
        bar.set_postfix_str(label)

    results = decode_regime.measure(o.model, o.text, settings, prompt=o.prompt_tokens, decode=o.decode_tokens,
                                    chunks=o.chunks, threads=o.threads, flash_attn=o.flash_attn, ngl=o.ngl,
                                    progress=step)
    bar.close()
    dense = results[0]
    doc = Perplexity(dense.ppl, None, [], dense.n_tokens)
    return Quality(doc, doc, True, [
        QualityRow(int(r.setting.sparsek.top_k or 0), r.ppl, None, 100.0 * (r.ppl - dense.ppl) / dense.ppl,
                   r.kl_mean, r.kl_stderr, r.top1_agreement_pct,
                   score_type=r.setting.sparsek.score_type, cache_type=r.setting.cache_type)
        for r in results[1:]], regime="decode")


def check_remote(rpc: str, regime: str) -> None:
    """RPC servers serve the llama.cpp tools, not the decode regime (llama-cpp-python in this process)."""
    if rpc and regime == "decode":
        raise builds.BuildError("--rpc applies to the prompt regime (llama-perplexity) and the speed runs; the decode "
                                "regime runs through llama-cpp-python in this process")


def check_cache_types(o: BenchOptions) -> None:
    """A quantized V cache needs flash attention at the pin (stock refuses it otherwise)."""
    unknown = [t for t in o.cache_types if t not in speed.CACHE_TYPES or t == speed.F16]
    if unknown:
        raise builds.BuildError(f"unknown quantized K/V cache type {', '.join(unknown)}; choose from q8_0, q4_0")
    if o.cache_types and not o.flash_attn:
        raise builds.BuildError("a quantized V cache needs flash attention (-fa on); pass --cache-types none to "
                                "measure without the quantized-cache rows")


def remote_args(o: BenchOptions) -> tuple[int, tuple[str, ...]]:
    """-ngl and the extra tool arguments for the patched runs: with --rpc the layers go to the servers (-ngl 0
    would leave them all local, so it becomes 99)."""
    if not o.rpc:
        return o.ngl, ()
    from pysparsek.llamacpp import rpc

    endpoints = ",".join(rpc.parse_endpoints(o.rpc))
    return o.ngl or 99, ("--rpc", endpoints)


def measure_speed(o: BenchOptions, patched: builds.Build) -> list[speed.Measurement]:
    configs = [speed.DENSE] + [o.at(k) for k in o.topks]
    bar = tqdm(total=o.processes * (len(speed.batches(configs)) + len(o.cache_types)), desc="llama-bench",
               unit="run", disable=o.quiet)
    started = [False]

    def step(label: str) -> None:
        # called as each run starts: the previous one has finished
        if started[0]:
            bar.update()
        started[0] = True
        bar.set_postfix_str(label)

    ngl, remote = remote_args(o)
    meas = speed.interleaved(patched, o.model, configs, processes=o.processes, n_prompt=o.n_prompt, n_gen=o.n_gen,
                             depths=o.depths, reps=o.reps, threads=o.threads, flash_attn=o.flash_attn, ngl=ngl,
                             progress=step, extra=remote, cache_types=tuple(o.cache_types),
                             cache_depths=o.cache_depths)
    bar.update()
    bar.close()
    return meas


def run(o: BenchOptions) -> BenchResult:
    """Measure everything (see README, 'results.json')."""
    if o.backend == "cuda" and not machine.gpus():
        raise builds.BuildError("backend 'cuda' requested, but no NVIDIA GPU is visible here (nvidia-smi lists none)")
    check_remote(o.rpc, o.regime)
    check_cache_types(o)
    ngl, remote = remote_args(o)
    # the stock build only for the prompt regime's identity check (compare.run requires it); the decode regime's
    # dense is the patched library with Sparse-K off, bit-identical to stock (tests/test_identity.py)
    patched = builds.require("patched", o.backend, tools=("llama-bench", "llama-perplexity"))
    if o.regime == "decode":
        if o.backend != "cpu":
            raise builds.BuildError("the decode regime runs through llama-cpp-python on the CPU build only")
        quality = decode_quality(o)
    else:
        # a stock client cannot use patched servers (patch 0015 refuses it), so stock runs locally: the identity
        # check then also holds the remote patched run to the local stock one
        quality = quality_of(compare.run(o.model, o.text, _settings(o), o.topks, backend=o.backend, quiet=o.quiet,
                                         patched_extra=("-ngl", str(ngl), *remote), cache_types=tuple(o.cache_types)))

    meas = [] if o.skip_speed else measure_speed(o, patched)

    copy = None
    # SparQ's copy (sparq_r) replaces the score type's and is F16, every channel of K (read r of them)
    copy_type = "f16" if o.sparsek.sparq_r else str(o.sparsek.score_type)
    if copy_type not in ("none", "None") and o.backend == "cpu":
        from pysparsek.measure import score_copy

        # the largest context llama-bench creates here
        copy = score_copy.measure(o.model, max(o.depths) + o.n_prompt + o.n_gen, copy_type)

    return BenchResult(
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        pysparsek_version=__version__,
        machine=machine.describe(),
        backend=o.backend,
        llama_cpp_pin=LLAMA_CPP_PIN,
        patch_series_sha256=patches.series_hash(),
        model={"path": str(o.model), "sha256": sha256_file(o.model), "size_bytes": o.model.stat().st_size},
        text={"path": str(o.text), "sha256": sha256_file(o.text)},
        options=o,
        score_copy=copy,
        quality=quality,
        speed=speed.summarize(meas),
        llama_bench_records=[rec for m in meas for rec in m.records],
    )
