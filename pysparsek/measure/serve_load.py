"""One llama-server configuration under load: start it, send the requests from concurrent clients, check nothing is
left held, send the same requests one at a time for reference, stop it (a crash or an unclean exit is an error).
Plus the Markdown table of several configurations."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from pysparsek.measure import load, server
from pysparsek.measure.cpuload import CpuLoad, CpuMeter
from pysparsek.proc import free_port


@dataclass(frozen=True)
class ConfigResult:
    name: str
    config: server.ServerConfig
    props_sparsek: dict[str, Any]
    slot_ctx: int
    loaded: load.Summary
    cpu: CpuLoad
    leaks: tuple[str, ...]
    alone: load.Summary | None
    agreement: load.Agreement | None
    exit_code: int

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "args": self.config.args(), "props_sparsek": self.props_sparsek,
                "slot_ctx": self.slot_ctx, "loaded": self.loaded.to_json(), "cpu": self.cpu.to_json(),
                "leaks": list(self.leaks), "alone": self.alone.to_json() if self.alone else None,
                "agreement": self.agreement.to_json() if self.agreement else None, "exit_code": self.exit_code}


def slot_ctx(client: httpx.Client) -> int:
    r = client.get("/slots")
    r.raise_for_status()
    return int(r.json()[0]["n_ctx"])


def measure(name: str, binary: Path, model: Path, config: server.ServerConfig, requests: Sequence[load.Request],
            clients: int, log: Path, *, alone: bool = True, warmup: Sequence[load.Request] = ()) -> ConfigResult:
    """`warmup`: requests sent at once before the loaded phase (e.g. one per slot to cache a shared prefix in each)."""
    port = free_port()
    with server.serving(server.command(binary, model, config, port), log, port) as srv, \
            httpx.Client(base_url=srv.url, timeout=60.0) as client:
        sk = server.props(client).get("sparsek", {})
        n_ctx = slot_ctx(client)
        if warmup:
            load.run(srv.url, warmup, len(warmup))
        meter = CpuMeter(srv.proc.pid)
        loaded = load.run(srv.url, requests, clients)
        cpu = meter.stop()
        held = tuple(server.leaks(client))
        ref = load.run_alone(srv.url, requests) if alone else None
    code = srv.proc.returncode
    return ConfigResult(name=name, config=config, props_sparsek=sk, slot_ctx=n_ctx, loaded=load.summarize(loaded),
                        cpu=cpu, leaks=held, alone=load.summarize(ref) if ref else None,
                        agreement=load.agreement(loaded, ref) if ref else None, exit_code=code)


def _ms(s: float | None) -> str:
    return "–" if s is None else f"{1000 * s:.0f}"


def markdown_table(results: Sequence[ConfigResult]) -> str:
    head = ("| server | failed | leaks | generated tok/s | prompt+gen tok/s | TTFT p50 / p95 ms | latency p50 / p95 ms "
            "| wall s | identical to alone: tokens · streamed text | first divergence (median; all) "
            "| CPU busy: server / others (cores) |")
    lines = [head, "|" + " --- |" * 11]
    for r in results:
        s, a = r.loaded, r.agreement
        ident = f"{a.identical}/{a.compared} · {a.streamed_identical}/{a.streamed_compared}" if a else "–"
        div = "–" if not a or not a.divergences else (
            f"{a.median_divergence:g}; {', '.join(map(str, a.divergences))}")
        lines.append(
            f"| {r.name} | {s.failed}/{s.requests} | {len(r.leaks)} | {s.generated_tok_s:.1f} | {s.total_tok_s:.1f} "
            f"| {_ms(s.ttft_p50_s)} / {_ms(s.ttft_p95_s)} | {_ms(s.latency_p50_s)} / {_ms(s.latency_p95_s)} "
            f"| {s.wall_s:.1f} | {ident} | {div} | {r.cpu.process_cores:.2f} / {r.cpu.other_cores:.2f} |")
    return "\n".join(lines)
