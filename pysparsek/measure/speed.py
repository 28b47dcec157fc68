"""Token rates from `llama-bench -o json`, dense and Sparse-K runs interleaved so machine drift hits both."""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pysparsek.errors import UserError
from pysparsek.llamacpp.build import Build
from pysparsek.proc import ToolError, run
from pysparsek.sparsek.settings import SparsekSettings, bench_flags


class SpeedError(UserError, RuntimeError):
    """llama-bench failed or printed no JSON."""


def canonical(s: SparsekSettings) -> SparsekSettings:
    """A speed configuration: every field set; dense (top_k 0) keeps only its score type (a copy it writes but
    never reads still costs), the rest cannot change what runs."""
    r = s.resolved()
    return r if r.top_k else SparsekSettings.off().replace(score_type=r.score_type)


DENSE = SparsekSettings.off()
F16 = "f16"                # llama.cpp's default K/V cache type; the others are what users pick instead of Sparse-K
CACHE_TYPES = ("f16", "q8_0", "q4_0")


@dataclass
class Measurement:
    config: SparsekSettings  # canonical()
    test: str          # "pp512" or "tg32"
    depth: int
    cache_type: str = F16    # K and V cache type (-ctk/-ctv)
    samples_ts: list[float] = field(default_factory=list)  # one mean tokens/s per round
    records: list[dict[str, Any]] = field(default_factory=list)

    @property
    def median_ts(self) -> float:
        return statistics.median(self.samples_ts)


def bench_once(build: Build, model: Path, settings: list[SparsekSettings], *, n_prompt: int, n_gen: int,
               depths: list[int], reps: int, threads: int | None, flash_attn: bool, ngl: int,
               extra: tuple[str, ...] = ()) -> list[dict]:
    """One llama-bench process sweeping every value the settings take (llama-bench runs the cross product)."""
    cmd = [str(build.tool("llama-bench")), "-m", str(model), "-o", "json", "-r", str(reps),
           "-p", str(n_prompt), "-n", str(n_gen), "-d", ",".join(map(str, depths)),
           "-fa", "1" if flash_attn else "0", "-ngl", str(ngl), *bench_flags(settings), *extra]
    if threads:
        cmd += ["-t", str(threads)]
    try:
        out = run(cmd).stdout
    except ToolError as exc:
        raise SpeedError(str(exc)) from exc
    start = out.find("[")
    if start < 0:
        raise SpeedError(f"llama-bench printed no JSON:\n{out[-2000:]}")
    return json.loads(out[start: out.rfind("]") + 1])


def test_name(record: dict[str, Any]) -> str:
    return f"pp{record['n_prompt']}" if record["n_prompt"] else f"tg{record['n_gen']}"


def record_config(record: dict[str, Any]) -> SparsekSettings:
    """The configuration a llama-bench record says ran."""
    return canonical(SparsekSettings.from_bench_record(record))


def record_cache_type(record: dict[str, Any]) -> str:
    """The K/V cache type a llama-bench record says ran (K and V are always set alike here)."""
    k, v = str(record.get("type_k", F16)), str(record.get("type_v", F16))
    if k != v:
        raise SpeedError(f"llama-bench ran K cache {k} with V cache {v}; pysparsek sets both alike")
    return k


def cache_flags(cache_type: str) -> tuple[str, ...]:
    if cache_type not in CACHE_TYPES:
        raise SpeedError(f"unknown K/V cache type {cache_type!r}; choose one of {', '.join(CACHE_TYPES)}")
    return () if cache_type == F16 else ("-ctk", cache_type, "-ctv", cache_type)


# llama-bench sweeps these within one process; a change of any other field starts another process
SWEPT = ("top_k", "score_type")


@dataclass(frozen=True)
class Batch:
    """One llama-bench process: its K list (0 = dense) x score types, the other fields shared."""
    shared: SparsekSettings   # the fields other than SWEPT
    top_ks: tuple[int, ...]
    score_types: tuple[str, ...]

    @property
    def settings(self) -> list[SparsekSettings]:
        return [self.shared.replace(top_k=k, score_type=t) for k in self.top_ks for t in self.score_types]

    @property
    def label(self) -> str:
        return f"K={','.join(map(str, self.top_ks))} {self.shared.details()}"


def batches(configs: list[SparsekSettings]) -> list[Batch]:
    """Configs grouped into llama-bench runs: one per combination of the fields that are not swept, dense (K=0)
    in the first.

    llama-bench sweeps K x score type, so a batch with several score types also runs combinations nobody asked
    for (dense with a score copy, for one); interleaved() drops those.
    """
    groups: dict[SparsekSettings, tuple[list[int], list[str]]] = {}
    configs = [canonical(c) for c in configs]
    for c in configs:
        if c.top_k:
            ks, types = groups.setdefault(c.replace(top_k=None, score_type=None), ([], []))
            if c.top_k not in ks:
                ks.append(c.top_k)
            if c.score_type not in types:
                types.append(c.score_type)
    if DENSE in configs:
        if not groups:
            groups[DENSE.replace(top_k=None, score_type=None)] = ([], ["none"])
        first = next(iter(groups))
        groups[first][0].insert(0, 0)
        if "none" not in groups[first][1]:
            groups[first][1].insert(0, "none")
    return [Batch(shared, tuple(ks), tuple(types)) for shared, (ks, types) in groups.items()]


def interleaved(build: Build, model: Path, configs: list[SparsekSettings], *, rounds: int, n_prompt: int, n_gen: int,
                depths: list[int], reps: int = 1, threads: int | None = None, flash_attn: bool = True, ngl: int = 0,
                progress: Callable[[str], None] | None = None, extra: tuple[str, ...] = (),
                cache_types: tuple[str, ...] = (), cache_depths: list[int] | None = None) -> list[Measurement]:
    """`rounds` passes over all configs; within a pass dense and every K run in turn, then dense with each
    quantized K/V cache of `cache_types` (one llama-bench process each: its cache is filled in its own type, at
    `cache_depths`, default `depths`: on a CPU filling a quantized cache to a long depth can take many minutes).

    Dense and the Ks of one mode share one llama-bench process per pass, so the KV cache at each depth is filled
    once (densely) and restored for the other runs (llama-bench's own depth cache): decode and prompt speed at a
    depth do not depend on how the cache was filled, and the fill dominates the run time at long depths.
    """
    results: dict[tuple[SparsekSettings, str, int, str], Measurement] = {}
    wanted = {canonical(c) for c in configs}
    runs = [(b, F16) for b in batches(configs)] + [(Batch(DENSE.replace(top_k=None, score_type=None), (0,), ("none",)),
                                                    t) for t in cache_types if t != F16]
    for r in range(rounds):
        for b, cache_type in runs:
            if progress:
                progress(f"round {r + 1}/{rounds}: " + (b.label if cache_type == F16 else f"dense, cache {cache_type}"))
            run_depths = depths if cache_type == F16 or cache_depths is None else cache_depths
            for rec in bench_once(build, model, b.settings, n_prompt=n_prompt, n_gen=n_gen, depths=run_depths,
                                  reps=reps, threads=threads, flash_attn=flash_attn, ngl=ngl,
                                  extra=extra + cache_flags(cache_type)):
                config = record_config(rec)
                if config not in wanted and cache_type == F16:
                    if len(b.score_types) > 1 and int(rec["sparsek_topk"]) in b.top_ks:
                        continue  # a K × score-type combination of the sweep that was not asked for
                    raise SpeedError(f"llama-bench reported a run nobody asked for: {config.label}")
                key = (config, test_name(rec), int(rec["n_depth"]), record_cache_type(rec))
                m = results.setdefault(key, Measurement(config, key[1], key[2], key[3]))
                m.samples_ts.append(float(rec["avg_ts"]))
                m.records.append(rec)
    return list(results.values())


@dataclass
class Ratio:
    config: SparsekSettings
    test: str
    depth: int
    ts: float
    dense_ts: float
    ratio: float          # median of per-round ratios (sparse / dense, same round)
    spread: tuple[float, float]  # min and max per-round ratio
    cache_type: str = F16

    @property
    def label(self) -> str:
        return self.config.label + ("" if self.cache_type == F16 else f", cache {self.cache_type}")


def ratios(measurements: list[Measurement]) -> list[Ratio]:
    """Every run but dense (f16 cache) against dense in the same round."""
    dense = {(m.test, m.depth): m for m in measurements if m.config.top_k == 0 and m.cache_type == F16}
    out = []
    for m in measurements:
        d = dense.get((m.test, m.depth))
        if d is None or m is d:
            continue
        per_round = [s / b for s, b in zip(m.samples_ts, d.samples_ts, strict=False)]
        out.append(Ratio(m.config, m.test, m.depth, m.median_ts, d.median_ts, statistics.median(per_round),
                         (min(per_round), max(per_round)), m.cache_type))
    return out


def table(rows: list[Ratio]) -> str:
    lines = [f"{'config':<28} {'test':>6} {'depth':>6} {'t/s':>9} {'dense t/s':>10} {'ratio':>7} {'spread':>15}"]
    for r in sorted(rows, key=lambda r: (r.test, r.depth, r.config.top_k, r.config.mode)):
        lines.append(f"{r.label:<28} {r.test:>6} {r.depth:>6} {r.ts:>9.2f} {r.dense_ts:>10.2f} "
                     f"{r.ratio:>7.3f} {r.spread[0]:>7.3f}-{r.spread[1]:<7.3f}")
    return "\n".join(lines)
