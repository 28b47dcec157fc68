"""The shipped builds leave ggml's AMX kernels out (they die with SIGILL at the pin), whatever CPU built them.

On a CPU without AMX, -march=native never enables AMX, so inspecting the libraries alone would pass there with or
without the fix. The compile-command check below fails on every machine if the fix is missing: it replays ggml-cpu's
exact compile command as if -march=native had named an AMX CPU.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

import pytest

from pysparsek.llamacpp import amx
from pysparsek.llamacpp import build as builds

pytestmark = [pytest.mark.build,
              pytest.mark.skipif(builds.keep_amx(), reason="PYSPARSEK_AMX=on: AMX kernels kept on purpose")]

NO_AMX = ("-mno-amx-tile", "-mno-amx-int8", "-mno-amx-bf16")
AMX_CPU = "-march=sapphirerapids"  # the first Xeons with AMX


def _amx_kernel_command(build: builds.Build) -> list[str]:
    entries = json.loads((build.dir / "compile_commands.json").read_text())
    [entry] = [e for e in entries if e["file"].endswith("ggml-cpu/amx/mmq.cpp")]
    return shlex.split(entry["command"])


def _predefined_macros(cmd: list[str], cwd: Path) -> str:
    """Run cmd as a preprocessor-only pass that prints the predefined macros (-dM -E) instead of compiling."""
    argv: list[str] = []
    skip = False
    for token in cmd:
        if skip:
            skip = False
            continue
        if token == "-o":
            skip = True
            continue
        argv.append("-dM" if token == "-c" else token)
    return subprocess.run([*argv, "-E"], cwd=cwd, capture_output=True, text=True, check=True).stdout


@pytest.mark.parametrize("flavor", ["stock", "patched"])
def test_an_amx_cpu_would_get_no_amx_kernels(flavor: str) -> None:
    build = builds.require(flavor)
    cmd = _amx_kernel_command(build)
    assert "-march=native" in cmd, "ggml-cpu is expected to build for the native CPU"
    as_on_amx_cpu = [AMX_CPU if t == "-march=native" else t for t in cmd]
    assert "__AMX_INT8__" not in _predefined_macros(as_on_amx_cpu, build.dir)
    # the probe can see AMX: the same command without pysparsek's options would compile the AMX kernels
    without_fix = [t for t in as_on_amx_cpu if t not in NO_AMX]
    assert "__AMX_INT8__" in _predefined_macros(without_fix, build.dir)


@pytest.mark.parametrize("flavor", ["stock", "patched"])
def test_shipped_libraries_contain_no_amx_instructions(flavor: str) -> None:
    build = builds.require(flavor)
    libs = sorted({p.resolve() for p in build.lib_dir.glob("lib*.so")})
    assert any(p.name.startswith("libggml-cpu.so") for p in libs)
    for lib in libs:
        assert amx.tile_instructions(lib) == [], lib


def test_the_disassembly_check_finds_amx_instructions(tmp_path: Path) -> None:
    src = tmp_path / "tile.c"
    src.write_text("#include <immintrin.h>\nvoid clear_tile(void) { _tile_zero(0); _tile_release(); }\n")
    obj = tmp_path / "tile.o"
    subprocess.run(["cc", "-O2", "-mamx-tile", "-c", str(src), "-o", str(obj)], check=True)
    assert amx.tile_instructions(obj) == ["tilezero", "tilerelease"]


def test_doctor_reports_the_cpu_and_the_builds_amx_state(stock_build: builds.Build,
                                                           patched_build: builds.Build) -> None:
    from pysparsek.cli import doctor

    rows = dict(doctor.report())
    assert rows["cpu"].endswith("AMX: " + (" ".join(amx.cpu_amx_flags()) or "none"))
    for flavor in ("stock", "patched"):
        state = rows[f"  AMX in {flavor}/cpu"]
        assert state.startswith("left out"), state
        assert "-march=native -mno-amx-tile -mno-amx-int8 -mno-amx-bf16" in state
