"""A description of the machine a measurement ran on."""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from pysparsek.llamacpp import amx


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpus() -> list[str]:
    if not shutil.which("nvidia-smi"):
        return []
    proc = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                          capture_output=True, text=True, check=False)
    return [line.strip() for line in proc.stdout.splitlines() if line.strip()] if proc.returncode == 0 else []


def load_1min() -> float | None:
    """The 1-minute load average: timings taken while other work runs on the cores say little."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def _cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_fraction(seconds: float = 2.0) -> float:
    """Share of all CPUs' time spent busy over the next `seconds` (0 = idle, 1 = every core busy)."""
    b0, t0 = _cpu_times()
    time.sleep(seconds)
    b1, t1 = _cpu_times()
    return (b1 - b0) / max(t1 - t0, 1)


def wait_until_idle(max_busy: float, seconds: float = 3.0, log: Callable[[str], None] | None = None) -> float:
    """Block until the CPUs were at most `max_busy` busy over `seconds`; returns that busy share. Timings taken
    while other work runs on the cores say little (spinning threads lose their time slices)."""
    waited = 0.0
    while (busy := busy_fraction(seconds)) > max_busy:
        waited += seconds
        if log and waited % 60 < seconds:
            log(f"waiting for idle CPUs: {100 * busy:.0f} % busy")
    return busy


def describe() -> dict[str, object]:
    mem = None
    with contextlib.suppress(ValueError, OSError):
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {"cpu": cpu_model(), "cpu_amx": amx.cpu_amx_flags(), "cores": os.cpu_count(), "memory_bytes": mem,
            "os": f"{platform.system()} {platform.release()}", "python": platform.python_version(), "gpus": gpus(),
            "load_1min": load_1min()}


def one_line(info: dict[str, object] | None = None) -> str:
    info = info or describe()
    gpu = f", GPU {'; '.join(info['gpus'])}" if info.get("gpus") else ""  # type: ignore[arg-type]
    return f"{info['cpu']}, {info['cores']} cores, {info['os']}{gpu}"
