"""How busy the machine was during a measurement, and how much of that was the measured process: on a shared
machine a throughput figure means little without the load beside it."""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from typing import Any

_TICK = os.sysconf("SC_CLK_TCK")


def _machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies over all CPUs since boot."""
    with open("/proc/stat", encoding="ascii") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already counted in user
    return total - idle, total


def _process_ticks(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        return int(rest[11]) + int(rest[12])  # utime + stime
    except (OSError, IndexError, ValueError):
        return 0


@dataclass(frozen=True)
class CpuLoad:
    wall_s: float
    cores: int
    machine_busy_cores: float   # average number of cores busy with anything
    process_cores: float        # average number of cores the measured process used
    other_cores: float          # busy with everything else (other users of a shared machine)
    loadavg_1m_end: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        return (f"{self.machine_busy_cores:.2f} of {self.cores} cores busy on average, {self.process_cores:.2f} by "
                f"the server, {self.other_cores:.2f} by other processes (1-min load average at the end "
                f"{self.loadavg_1m_end:.2f})")


class CpuMeter:
    """Start it before a phase, call stop() after it."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.t0 = time.monotonic()
        self.busy0, self.total0 = _machine_ticks()
        self.proc0 = _process_ticks(pid)

    def stop(self) -> CpuLoad:
        wall = time.monotonic() - self.t0
        busy, total = _machine_ticks()
        cores = os.cpu_count() or 1
        d_total = max(1, total - self.total0)
        machine = cores * (busy - self.busy0) / d_total
        process = (_process_ticks(self.pid) - self.proc0) / _TICK / wall if wall > 0 else 0.0
        return CpuLoad(wall_s=wall, cores=cores, machine_busy_cores=machine, process_cores=process,
                       other_cores=max(0.0, machine - process), loadavg_1m_end=os.getloadavg()[0])
