"""A description of the machine a measurement ran on."""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import subprocess

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
