"""The text of a bench result: header, quality and speed tables, the closing headline."""

from __future__ import annotations

from pathlib import Path

from pysparsek.measure import machine
from pysparsek.measure.results import STEADY_SPREAD, BenchResult, Rate, ScoreCopy, Speed, SpeedRow


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def quality_table(r: BenchResult) -> str:
    q, o = r.quality, r.options
    lines = []
    if q.regime == "decode":
        lines.append(f"decode regime: per chunk {o.prompt_tokens} prompt tokens (dense), then {o.decode_tokens} "
                     f"tokens decoded one at a time; {q.stock.decoded_tokens} decoded tokens in all")
    lines += [f"{'K':>8} {'PPL':>10} {'ΔPPL %':>8} {'KL div':>10} {'top-1 %':>8}",
              f"{'dense':>8} {q.stock.ppl:>10.4f} {'':>8} {'':>10} {'':>8}"]
    for s in q.sparse:
        lines.append(f"{s.top_k:>8} {s.ppl:>10.4f} {s.delta_ppl_pct:>+8.2f} {_num(s.kl_mean, '>10.6f')} "
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
    bound), and the ratio to dense (median of same-round ratios, min-max)."""
    n = max([d.rate.processes for d in sp.dense], default=0)
    lines = [f"{'K':>8} {'setting':<20} {'test':>6} {'depth':>6} {'t/s':>9} {'min-max t/s':>17} {'spread':>6}   "
             f"{'ratio':>7} {'ratio min-max':>13}"]
    rows: list[tuple[str, str, int, int, str]] = []
    for d in sp.dense:
        rows.append((d.test, "", d.depth, 0, f"{'dense':>8} {'':<20} {d.test:>6} {d.depth:>6} {_rate(d.rate)}"))
    for s in sp.sparse:
        rows.append((s.test, s.settings.details(), s.depth, s.top_k,
                     f"{s.top_k:>8} {s.settings.details():<20} {s.test:>6} {s.depth:>6} {_rate(s.rate)} "
                     f"{s.ratio:>7.3f} {s.ratio_min:>6.3f}-{s.ratio_max:<6.3f}"))
    lines += [row[-1] for row in sorted(rows, key=lambda r: r[:4])]
    lines.append(f"t/s = median over {n} separate llama-bench processes; spread = max/min over them "
                 f"(! = above {STEADY_SPREAD:.2f})")
    return "\n".join(lines)


def speed_table(r: BenchResult) -> str:
    if not r.speed.dense:
        return "(speed not measured)"
    return speed_rows(r.speed)


def headline(r: BenchResult) -> str:
    """Where Sparse-K pays: each setting's ratio to dense at the deepest depth measured, decode and prompt."""
    sparse = r.speed.sparse
    if not sparse:
        return ""
    depth = max(s.depth for s in sparse)
    lines = [f"at depth {depth} (tokens already in the KV cache), Sparse-K vs dense on this machine:"]
    by_setting: dict[str, list[SpeedRow]] = {}
    for s in sorted(sparse, key=lambda s: s.top_k):
        if s.depth == depth:
            by_setting.setdefault(s.settings.label, []).append(s)
    for label, rows in by_setting.items():
        parts = []
        for s in sorted(rows, key=lambda s: s.test, reverse=True):
            kind = "decode" if s.test.startswith("tg") else "prompt"
            parts.append(f"{kind} ({s.test}) {s.ratio:.2f}× ({s.ratio_min:.2f}-{s.ratio_max:.2f}; t/s spread "
                         f"{s.rate.spread:.2f} over {s.rate.processes} processes"
                         + ("" if s.rate.steady else ", UNSTEADY") + ")")
        q = next((row for row in r.quality.sparse if row.top_k == rows[0].top_k), None)
        quality = f"; PPL {q.delta_ppl_pct:+.2f} %, KL {_num(q.kl_mean, '.4f')}" if q else ""
        lines.append(f"  {label}: " + ", ".join(parts) + quality)
    return "\n".join(lines)


def score_copy_text(s: ScoreCopy) -> str:
    return (f"score copy of K ({s.score_type}) at {s.n_ctx} cells: {s.bytes / 2**20:.1f} MiB, "
            f"{100 * s.fraction_of_k_f16:.1f} % of an f16 K ({s.k_f16_bytes / 2**20:.1f} MiB)")


def header(r: BenchResult) -> str:
    o = r.options
    return (f"model {Path(r.model['path']).name} (sha256 {r.model['sha256'][:12]}), "
            f"text {Path(r.text['path']).name}, ctx {o.ctx}, {o.chunks} chunks, "
            f"flash attention {'on' if o.flash_attn else 'off'}, Sparse-K {o.sparsek.details()}, "
            f"quality regime {o.regime}, backend {r.backend}"
            + (f", patched runs on RPC servers {o.rpc}" if o.rpc else "") + "\n"
            f"machine: {machine.one_line(r.machine)}\n"
            f"llama.cpp {r.llama_cpp_pin[:12]} + patch series {r.patch_series_sha256[:12]}"
            + (f"\n{score_copy_text(r.score_copy)}" if r.score_copy else ""))
