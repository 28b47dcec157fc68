"""The text of a bench result: header, quality and speed tables, the closing headline."""

from __future__ import annotations

from pathlib import Path

from pysparsek.measure import machine
from pysparsek.measure.results import STEADY_SPREAD, BenchResult, QualityRow, Rate, ScoreCopy, Speed, SpeedRow
from pysparsek.sparsek import recommended


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def quality_table(r: BenchResult) -> str:
    q, o = r.quality, r.options
    lines = []
    if q.regime == "decode":
        why = (f" (the regime of the decode-only policy, max_ubatch {o.sparsek.max_ubatch}: prompts run dense)"
               if recommended.decode_only(o.sparsek, o.ubatch) else "")
        lines.append(f"quality, decode regime{why}: per chunk {o.prompt_tokens} prompt tokens (dense), then "
                     f"{o.decode_tokens} tokens decoded one at a time; {q.stock.decoded_tokens} decoded tokens in all")
    else:
        lines.append(f"quality, prompt regime: llama-perplexity, {o.chunks} chunks of {o.ctx} tokens, every token a "
                     "row of a prompt batch under the setting")
    lines += [f"{'K':>16} {'PPL':>10} {'ΔPPL %':>8} {'KL div':>10} {'top-1 %':>8}",
              f"{'dense':>16} {q.stock.ppl:>10.4f} {'':>8} {'':>10} {'':>8}"]
    for s in q.sparse:
        lines.append(f"{s.label:>16} {s.ppl:>10.4f} {s.delta_ppl_pct:>+8.2f} {_num(s.kl_mean, '>10.6f')} "
                     f"{_num(s.top1_agreement_pct, '>8.2f')}")
    if q.regime == "decode":
        lines.append("dense = the patched library with Sparse-K off (bit-identical to stock, tests/test_identity.py)")
    else:
        lines.append("patched with Sparse-K off vs stock: " + ("identical" if q.identical else "DIFFERENT"))
    return "\n".join(lines)


def _rate(rate: Rate) -> str:
    flag = "" if rate.steady else " !"
    return f"{rate.median:>9.2f} {rate.low:>8.2f}-{rate.high:<8.2f} {rate.spread:>6.3f}{flag:<2}"


def speed_rows(sp: Speed) -> str:
    """Each setting's median t/s over its processes, their min-max and spread (max/min; `!` above the steadiness
    bound), and the ratio to dense with an f16 cache (median of same-round ratios, min-max). Dense with a quantized
    K/V cache is a row of its own."""
    n = max([d.rate.processes for d in sp.dense], default=0)
    lines = [f"{'K':>8} {'setting':<34} {'test':>6} {'depth':>6} {'t/s':>9} {'min-max t/s':>17} {'spread':>6}   "
             f"{'ratio':>7} {'ratio min-max':>13}"]
    rows: list[tuple[str, int, bool, int, str, str]] = []
    for d in sp.dense:
        rows.append((d.test, d.depth, False, 0, "",
                     f"{'dense':>8} {'':<34} {d.test:>6} {d.depth:>6} {_rate(d.rate)}"))
    for s in sp.sparse:
        setting = s.settings.details() if s.top_k else f"dense, {s.cache_type} K/V cache"
        rows.append((s.test, s.depth, bool(s.top_k), s.top_k, setting,
                     f"{s.top_k or '-':>8} {setting:<34} {s.test:>6} {s.depth:>6} {_rate(s.rate)} "
                     f"{s.ratio:>7.3f} {s.ratio_min:>6.3f}-{s.ratio_max:<6.3f}"))
    lines += [row[-1] for row in sorted(rows, key=lambda r: r[:5])]
    lines.append(f"t/s = median over {n} separate llama-bench processes; spread = max/min over them "
                 f"(! = above {STEADY_SPREAD:.2f}); ratio = to dense with an f16 K/V cache")
    return "\n".join(lines)


def speed_table(r: BenchResult) -> str:
    if not r.speed.dense:
        return "(speed not measured)"
    return speed_rows(r.speed)


def _quality(r: BenchResult, row: SpeedRow) -> QualityRow | None:
    return next((q for q in r.quality.sparse if q.top_k == row.top_k and q.cache_type == row.cache_type), None)


def _ratio(rows: list[SpeedRow], kind: str) -> SpeedRow | None:
    return next((s for s in rows if s.test.startswith(kind)), None)


def verdict(r: BenchResult, sparse: list[SpeedRow], cache: list[SpeedRow], cache_type: str) -> str:
    """One sentence: is this Sparse-K setting faster in decode at less quality loss (KL) than dense with a
    quantized K/V cache of this type? Speed at the deepest depth both were measured at."""
    s_tg, c_tg = _ratio(sparse, "tg"), _ratio(cache, "tg")
    s_q, c_q = _quality(r, sparse[0]), _quality(r, cache[0])
    if s_tg is None or c_tg is None or s_q is None or c_q is None or s_q.kl_mean is None or c_q.kl_mean is None:
        return f"vs a {cache_type} cache: not comparable (a speed or quality value is missing)"
    faster = "faster" if s_tg.ratio > c_tg.ratio else "slower"
    less = "less" if s_q.kl_mean < c_q.kl_mean else "more"
    answer = "yes" if faster == "faster" and less == "less" else "no"
    return (f"faster at less quality loss than a {cache_type} K/V cache? {answer}: {faster} in decode "
            f"({s_tg.ratio:.2f}× vs {c_tg.ratio:.2f}× dense at depth {s_tg.depth}) at {less} quality loss "
            f"(KL {s_q.kl_mean:.4f} vs {c_q.kl_mean:.4f})")


def headline(r: BenchResult) -> str:
    """Where Sparse-K pays: each setting's ratio to dense at the deepest depth measured, decode and prompt, then,
    per Sparse-K setting, one sentence against each quantized K/V cache measured."""
    rows = r.speed.sparse
    if not rows:
        return ""
    depth = max(s.depth for s in rows)
    lines = [f"at depth {depth} (tokens already in the KV cache), vs dense (f16 cache) on this machine:"]
    by_setting: dict[str, list[SpeedRow]] = {}
    for s in sorted(rows, key=lambda s: (s.cache_type != "f16", s.top_k)):
        if s.depth == depth:
            by_setting.setdefault(s.label, []).append(s)
    for label, group in by_setting.items():
        parts = []
        for s in sorted(group, key=lambda s: s.test, reverse=True):
            kind = "decode" if s.test.startswith("tg") else "prompt"
            parts.append(f"{kind} ({s.test}) {s.ratio:.2f}× ({s.ratio_min:.2f}-{s.ratio_max:.2f}; t/s spread "
                         f"{s.rate.spread:.2f} over {s.rate.processes} processes"
                         + ("" if s.rate.steady else ", UNSTEADY") + ")")
        q = _quality(r, group[0])
        quality = f"; PPL {q.delta_ppl_pct:+.2f} %, KL {_num(q.kl_mean, '.4f')}" if q else ""
        lines.append(f"  {label}: " + ", ".join(parts) + quality)
    for label, group in by_setting.items():
        if not group[0].top_k:
            continue
        for cache_type in r.options.cache_types:
            cache = [s for s in rows if s.cache_type == cache_type]
            common = [d for d in {s.depth for s in cache} if any(s.depth == d for s in rows
                                                                 if s.label == label)]
            if not common:
                lines.append(f"  {label}: vs a {cache_type} cache: not measured")
                continue
            at = max(common)
            line = f"  {label}: " + verdict(r, [s for s in rows if s.label == label and s.depth == at],
                                            [s for s in cache if s.depth == at], cache_type)
            deep_tg = _ratio(group, "tg")
            if at < depth and deep_tg is not None:
                # filling a quantized cache to the deepest depth can take many minutes on a CPU (--cache-depths)
                line += (f"; compared at depth {at}, the deepest both were measured at: at depth {depth} Sparse-K "
                         f"decodes at {deep_tg.ratio:.2f}× dense, the {cache_type} cache was not measured there")
            lines.append(line)
    return "\n".join(lines)


def score_copy_text(s: ScoreCopy) -> str:
    return (f"score copy of K ({s.score_type}) at {s.n_ctx} cells: {s.bytes / 2**20:.1f} MiB, "
            f"{100 * s.fraction_of_k_f16:.1f} % of an f16 K ({s.k_f16_bytes / 2**20:.1f} MiB)")


def header(r: BenchResult) -> str:
    o = r.options
    return (f"model {Path(r.model['path']).name} (sha256 {r.model['sha256'][:12]}), "
            f"text {Path(r.text['path']).name}, ctx {o.ctx}, {o.chunks} chunks, "
            f"flash attention {'on' if o.flash_attn else 'off'}, Sparse-K {o.sparsek.details()} "
            f"({'the recommended deployment' if recommended.is_recommended(o.sparsek) else 'as given'}), "
            f"quality regime {o.regime}, backend {r.backend}"
            + (f", patched runs on RPC servers {o.rpc}" if o.rpc else "") + "\n"
            f"machine: {machine.one_line(r.machine)}\n"
            f"llama.cpp {r.llama_cpp_pin[:12]} + patch series {r.patch_series_sha256[:12]}"
            + (f"\n{score_copy_text(r.score_copy)}" if r.score_copy else ""))
