"""AMX: whether this CPU has it, and whether a built library would execute AMX tile instructions.

At the pin, ggml's AMX kernels die with SIGILL (ggml-org/llama.cpp#26954), so pysparsek builds leave them out
(pysparsek/cmake/ggml_no_amx.cmake). These checks let `doctor` and the tests see that the built code agrees.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

# every AMX instruction touches tile state; a library without any of these cannot fault on AMX
TILE_MNEMONICS = re.compile(r"\s(ldtilecfg|sttilecfg|tilerelease|tilezero|tileloadd|tileloaddt1|tilestored|"
                            r"tdpb[su][su]d|tdpbf16ps|tdpfp16ps|tcmmimfp16ps|tcmmrlfp16ps)\s")
AMX_CPU_FLAGS = ("amx_tile", "amx_int8", "amx_bf16")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_amx_flags() -> list[str]:
    flags = cpu_flags()
    return [f for f in AMX_CPU_FLAGS if f in flags]


def tile_instructions(binary: Path) -> list[str]:
    """AMX tile instructions in binary's disassembly (objdump from binutils)."""
    objdump = shutil.which("objdump")
    if objdump is None:
        raise FileNotFoundError("objdump not found (Debian package binutils)")
    out = subprocess.run([objdump, "-d", "--no-show-raw-insn", str(binary)], capture_output=True, text=True,
                         check=True).stdout
    return [m.group(1) for m in TILE_MNEMONICS.finditer(out)]


def ggml_cpu_library(lib_dir: Path) -> Path | None:
    lib = lib_dir / "libggml-cpu.so"
    return lib if lib.exists() else None
