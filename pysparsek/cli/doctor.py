"""What this checkout would build and run with: pin, source, builds, backend, ccache, binding."""

from __future__ import annotations

import importlib.metadata
import shutil

from pysparsek import paths
from pysparsek.llamacpp import amx, patches, source
from pysparsek.llamacpp import build as builds
from pysparsek.llamacpp.pin import LLAMA_CPP_PIN
from pysparsek.measure import machine


def report() -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = [("llama.cpp pin", LLAMA_CPP_PIN)]
    has_amx = amx.cpu_amx_flags()
    rows.append(("cpu", f"{machine.cpu_model()}; AMX: " + (" ".join(has_amx) if has_amx else "none")))
    src = source.locate()
    if src:
        rows.append(("source", f"{src.origin}: {src.path} (commit verified)"))
    elif source.submodule_populated():
        rows.append(("source", "submodule present but NOT at the pin or modified"))
    else:
        rows.append(("source", "not fetched yet (next build downloads the llama-cpp-python sdist from PyPI)"))
    try:
        rows.append(("patch series", f"{len(patches.read_series())} patches, sha256 {patches.series_hash()[:16]}"))
    except patches.PatchError as exc:
        rows.append(("patch series", f"ERROR: {exc}"))
    for flavor in ("stock", "patched"):
        for backend in builds.BACKENDS:
            b = builds.get(flavor, backend)
            if b.exists():
                state = f"built in {b.dir}"
            elif b.dir.exists():
                state = f"incomplete in {b.dir}"
            else:
                continue
            rows.append((f"build {flavor}/{backend}", state))
            if b.exists():
                rows.append((f"  AMX in {flavor}/{backend}", _amx_state(b)))
    if not any(k.startswith("build ") for k, _ in rows):
        rows.append(("builds", "none yet (make stock-build patched-build)"))
    rows.append(("backend", "cuda available (nvcc found)" if shutil.which("nvcc") else "cpu (no nvcc on PATH)"))
    ccache = shutil.which("ccache")
    cache_dir = builds.ccache_env()["CCACHE_DIR"]
    rows.append(("ccache", f"on ({ccache}, cache {cache_dir})" if ccache else "off (not installed)"))
    rows.append(("ninja", shutil.which("ninja") or "not found (CMake's default generator is used)"))
    try:
        version = importlib.metadata.version("llama-cpp-python")
        patched = builds.get("patched")
        lib = patched.lib_dir / "libllama.so"
        target = str(lib) if lib.is_file() else "the patched build's libllama.so once it is built"
        rows.append(("llama-cpp-python", f"{version}; pysparsek.llm binds it to {target}"))
    except importlib.metadata.PackageNotFoundError:
        rows.append(("llama-cpp-python", "not installed"))
    rows.append(("build dir", str(paths.build_root())))
    return rows


def _amx_state(b: builds.Build) -> str:
    lib = amx.ggml_cpu_library(b.lib_dir)
    if lib is None:
        return "no libggml-cpu.so to inspect"
    try:
        found = amx.tile_instructions(lib)
    except (FileNotFoundError, OSError) as exc:
        return f"cannot inspect {lib.name}: {exc}"
    if found:
        why = "kept on purpose (PYSPARSEK_AMX=on)" if builds.keep_amx() else "rebuild: make clean builds"
        return (f"PRESENT: {len(found)} AMX tile instructions in {lib.name}; on CPUs where the pinned AMX code "
                f"faults this build dies with SIGILL ({why})")
    return f"left out (no AMX tile instructions in {lib.name}; ggml-cpu built with {_arch_flags(b)})"


def _arch_flags(b: builds.Build) -> str:
    """The -march/-m options ggml-cpu was compiled with, from the build's compile_commands.json."""
    import json
    import shlex

    db = b.dir / "compile_commands.json"
    if not db.is_file():
        return "unknown flags"
    for entry in json.loads(db.read_text()):
        if entry["file"].endswith("ggml-cpu/ggml-cpu.c"):
            flags = [t for t in shlex.split(entry["command"]) if t.startswith(("-march", "-mno-amx", "-mamx"))]
            return " ".join(flags) or "no -march flags"
    return "unknown flags"


def render(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
