"""Token rates from `llama-bench -o json`: every setting in several separate llama-bench processes, dense and
Sparse-K interleaved within each round so machine drift hits both.

A setting's speed can differ from one process to the next for the same command (issue #23), so each setting is
measured in `processes` processes and reported as a `Rate` (the samples, their median and max/min spread).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pysparsek.errors import UserError
from pysparsek.llamacpp.build import Build
from pysparsek.measure import machine
from pysparsek.measure.results import DenseSpeed, Rate, Speed, SpeedRow
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
    samples_ts: list[float] = field(default_factory=list)  # one mean tokens/s per process (round)
    records: list[dict[str, Any]] = field(default_factory=list)
    loads: list[float | None] = field(default_factory=list)  # 1-minute load average as each process started

    @property
    def rate(self) -> Rate:
        return Rate(tuple(self.samples_ts), tuple(self.loads))

    @property
    def label(self) -> str:
        return self.config.label + ("" if self.cache_type == F16 else f", cache {self.cache_type}")


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
SWEPT = ("top_k", "score_type", "mode")


@dataclass(frozen=True)
class Batch:
    """One llama-bench process: its K list (0 = dense) x score types x modes, the other fields shared."""
    shared: SparsekSettings   # the fields other than SWEPT
    top_ks: tuple[int, ...]
    score_types: tuple[str, ...]
    modes: tuple[str, ...]

    @property
    def settings(self) -> list[SparsekSettings]:
        return [self.shared.replace(top_k=k, score_type=t, mode=m)
                for k in self.top_ks for t in self.score_types for m in self.modes]

    def swept(self, config: SparsekSettings) -> bool:
        """Whether llama-bench's cross product of this batch runs config (asked for or not)."""
        return (int(config.top_k or 0) in self.top_ks and (not config.top_k or (
            config.score_type in self.score_types and config.mode in self.modes)))

    @property
    def label(self) -> str:
        # details() of the shared fields, less its leading mode (unset there: the swept modes say it)
        rest = self.shared.details().split(" ", 1)[1:]
        types = [t for t in self.score_types if t != "none"]
        return " ".join([f"K={','.join(map(str, self.top_ks))}", "/".join(self.modes), *types, *rest])


def batches(configs: list[SparsekSettings]) -> list[Batch]:
    """Configs grouped into llama-bench runs: one per combination of the fields that are not swept, dense (K=0)
    in the first.

    A process fills the KV cache at each depth once, which dominates its time at long depths, so K, score type
    and mode share it. llama-bench runs the cross product of the three, so a batch can also run combinations
    nobody asked for (dense with a score copy, dense once per mode, a mode at a score type asked only for
    another); interleaved() drops those.
    """
    groups: dict[SparsekSettings, tuple[list[int], list[str], list[str]]] = {}
    configs = [canonical(c) for c in configs]
    for c in configs:
        if c.top_k:
            ks, types, modes = groups.setdefault(c.replace(top_k=None, score_type=None, mode=None), ([], [], []))
            for values, v in ((ks, c.top_k), (types, c.score_type), (modes, c.mode)):
                if v not in values:
                    values.append(v)
    if DENSE in configs:
        if not groups:
            groups[DENSE.replace(top_k=None, score_type=None, mode=None)] = ([], ["none"], [str(DENSE.mode)])
        first = next(iter(groups))
        groups[first][0].insert(0, 0)
        if "none" not in groups[first][1]:
            groups[first][1].insert(0, "none")
    return [Batch(shared, tuple(ks), tuple(types), tuple(modes)) for shared, (ks, types, modes) in groups.items()]


def interleaved(build: Build, model: Path, configs: list[SparsekSettings], *, processes: int, n_prompt: int,
                n_gen: int, depths: list[int], reps: int = 1, threads: int | None = None, flash_attn: bool = True,
                ngl: int = 0, progress: Callable[[str], None] | None = None,
                extra: tuple[str, ...] = (), gate: Callable[[], object] | None = None,
                cache_types: tuple[str, ...] = (), cache_depths: list[int] | None = None) -> list[Measurement]:
    """Every config measured in `processes` separate llama-bench processes: `processes` rounds, each starting one
    process per batch (dense and the Ks of one mode share one), then one process of dense with each quantized K/V
    cache of `cache_types` (its cache is filled in its own type, at `cache_depths`, default `depths`: on a CPU
    filling a quantized cache to a long depth can take many minutes), so the i-th sample of every config comes from
    round i. `gate`, if given, is called before each process starts (e.g. to wait for idle CPUs).

    Sharing a process, dense and the Ks of a mode fill the KV cache at each depth once (densely) and restore it for
    the other runs (llama-bench's own depth cache): decode and prompt speed at a depth do not depend on how the
    cache was filled, and the fill dominates the run time at long depths.
    """
    results: dict[tuple[SparsekSettings, str, int, str], Measurement] = {}
    wanted = {canonical(c) for c in configs}
    cache_batch = Batch(DENSE.replace(top_k=None, score_type=None, mode=None), (0,), ("none",), (str(DENSE.mode),))
    runs = [(b, F16) for b in batches(configs)] + [(cache_batch, t) for t in dict.fromkeys(cache_types) if t != F16]
    for r in range(processes):
        for b, cache_type in runs:
            if gate:
                gate()
            load = machine.load_1min()
            if progress:
                label = b.label if cache_type == F16 else f"dense, cache {cache_type}"
                progress(f"process {r + 1}/{processes}: {label}" + ("" if load is None else f" (load {load:.2f})"))
            run_depths = depths if cache_type == F16 or cache_depths is None else cache_depths
            seen = set()
            for rec in bench_once(build, model, b.settings, n_prompt=n_prompt, n_gen=n_gen, depths=run_depths,
                                  reps=reps, threads=threads, flash_attn=flash_attn, ngl=ngl,
                                  extra=extra + cache_flags(cache_type)):
                config = record_config(rec)
                if config not in wanted and cache_type == F16:
                    if b.swept(config):
                        continue  # a combination of the sweep that was not asked for
                    raise SpeedError(f"llama-bench reported a run nobody asked for: {config.label}")
                key = (config, test_name(rec), int(rec["n_depth"]), record_cache_type(rec))
                if key[3] != cache_type:
                    raise SpeedError(f"llama-bench ran a {key[3]} K/V cache where {cache_type} was asked for")
                if key in seen:
                    continue  # dense again, once per mode of the sweep: the first one counts
                seen.add(key)
                m = results.setdefault(key, Measurement(config, key[1], key[2], key[3]))
                m.samples_ts.append(float(rec["avg_ts"]))
                m.records.append(rec)
                m.loads.append(load)
    for m in results.values():
        if len(m.samples_ts) != processes:
            raise SpeedError(f"{m.label} {m.test} at depth {m.depth}: {len(m.samples_ts)} results from "
                             f"{processes} llama-bench processes (one expected from each)")
    return list(results.values())


def summarize(measurements: list[Measurement]) -> Speed:
    """Dense's rates (f16 cache), and every other run's rate (Sparse-K, dense with a quantized K/V cache) against
    dense's of the same rounds."""
    dense = {(m.test, m.depth): m for m in measurements if m.config == DENSE and m.cache_type == F16}
    return Speed([DenseSpeed(m.test, m.depth, m.rate) for m in dense.values()],
                 [SpeedRow(m.config, m.test, m.depth, m.rate, dense[(m.test, m.depth)].rate, m.cache_type)
                  for m in measurements
                  if (m.config.top_k or m.cache_type != F16) and (m.test, m.depth) in dense])
