"""Stock and patched llama.cpp builds: exported trees under build/, CMake + Ninja + ccache."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pysparsek import paths
from pysparsek.errors import UserError
from pysparsek.llamacpp import patches, source
from pysparsek.llamacpp.buildlog import run_logged
from pysparsek.proc import run

# Only what the project uses; the full tree has ~100 targets and takes far longer on 2 cores. Both flavors: what
# runs on stock too, llama-perplexity (the identity and KL references) and ggml's RPC server (GGML_RPC=ON: a remote
# machine runs the patched one; the stock one shows a stock server refusing a patched client).
BINARIES = ["llama-perplexity", "ggml-rpc-server"]
# The patched build only: the tools people run with Sparse-K (llama-server among them) and the series' reference
# test of the Sparse-K mask op. Nothing runs these from the stock build (dense speed is the patched build with
# -sk 0, bit-identical to stock), and they cost CI time there.
PATCHED_ONLY = ["llama-bench", "llama-completion", "llama-quantize", "test-sparsek-mask", "llama-server"]
# test-backend-ops holds the series' cases of the op; it checks a backend against the CPU, so a CPU-only build has
# nothing for it to check and nothing in the tests runs it, while test-backend-ops.cpp is the longest compile of the
# build (2-3 CPU-minutes on the 2-core CI machine): built by default for CUDA only, on the CPU with
# `pysparsek build --patched --target test-backend-ops` (its perf mode times CPU ops too).
CUDA_ONLY = ["test-backend-ops"]
# Appends -mno-amx-* to ggml-cpu after its -march=native (see the file for why).
NO_AMX_CMAKE = Path(__file__).resolve().parent.parent / "cmake" / "ggml_no_amx.cmake"


def wanted(flavor: str, backend: str = "cpu", tools: tuple[str, ...] | None = None) -> list[str]:
    """The tools a caller names, or every binary of the flavor (None)."""
    return binaries(flavor, backend) if tools is None else list(tools)


def targets(flavor: str, backend: str = "cpu", tools: tuple[str, ...] | None = None) -> list[str]:
    """libllama and `tools` (None: every binary of the flavor)."""
    return ["llama", *wanted(flavor, backend, tools)]


def binaries(flavor: str, backend: str = "cpu") -> list[str]:
    patched = flavor == "patched"
    return BINARIES + (PATCHED_ONLY if patched else []) + (CUDA_ONLY if patched and backend == "cuda" else [])
BACKENDS = ("cpu", "cuda")


class BuildError(UserError, RuntimeError):
    """A build cannot be configured or compiled."""


@dataclass(frozen=True)
class Build:
    flavor: str
    backend: str
    dir: Path

    @property
    def bin_dir(self) -> Path:
        return self.dir / "bin"

    @property
    def lib_dir(self) -> Path:
        # llama.cpp puts shared libraries next to the binaries.
        return self.dir / "bin"

    def tool(self, name: str) -> Path:
        return self.bin_dir / name

    def exists(self, tools: tuple[str, ...] | None = None) -> bool:
        """libllama and `tools` are built (None: every binary of the flavor)."""
        return (self.lib_dir / "libllama.so").is_file() and all(self.tool(b).is_file()
                                                                  for b in wanted(self.flavor, self.backend, tools))


def get(flavor: str, backend: str = "cpu") -> Build:
    if backend not in BACKENDS:
        raise BuildError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    return Build(flavor, backend, paths.cmake_dir(flavor, backend))


def tree_stamp(flavor: str, src: source.Source) -> str:
    series = patches.series_hash() if flavor == "patched" else "none"
    return f"{src.commit} {series}"


def prepare_tree(flavor: str, log=print) -> Path:
    """Export the pin (plus the series for 'patched') into build/<flavor>/src, touching only changed files."""
    tree = paths.tree_dir(flavor)
    stamp_file = paths.flavor_root(flavor) / "src.stamp"
    src = source.acquire()
    stamp = tree_stamp(flavor, src)
    if tree.is_dir() and stamp_file.is_file() and stamp_file.read_text() == stamp:
        return tree
    log(f"pysparsek: preparing {flavor} tree from {src.origin} ({src.commit[:12]})")
    paths.flavor_root(flavor).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"{flavor}-", dir=paths.flavor_root(flavor)) as tmp:
        staging = Path(tmp) / "src"
        source.export_commit(src, staging)
        if flavor == "patched":
            patches.apply_series(staging, patches.read_series())
        changed = source.sync_tree(staging, tree)
    stamp_file.write_text(stamp)
    log(f"pysparsek: {flavor} tree ready ({changed} files updated)")
    return tree


def ccache_env() -> dict[str, str]:
    # Relative paths under build/ make stock and patched objects share cache entries.
    return {
        "CCACHE_BASEDIR": str(paths.build_root()),
        "CCACHE_NOHASHDIR": "1",
        "CCACHE_DIR": os.environ.get("CCACHE_DIR", str(paths.cache_dir() / "ccache")),
        "CCACHE_MAXSIZE": os.environ.get("CCACHE_MAXSIZE", "5G"),
    }


def keep_amx() -> bool:
    """PYSPARSEK_AMX=on keeps ggml's AMX kernels, for hosts whose kernel runs them (they are faster there)."""
    return os.environ.get("PYSPARSEK_AMX", "off").lower() in ("on", "1", "yes")


def cmake_args(backend: str) -> list[str]:
    args = [
        "-DCMAKE_BUILD_TYPE=Release",
        "-DBUILD_SHARED_LIBS=ON",
        "-DLLAMA_BUILD_TESTS=ON",
        "-DLLAMA_BUILD_TOOLS=ON",
        "-DLLAMA_BUILD_EXAMPLES=OFF",
        # configured in both flavors (same flags), built only in the patched one; no web UI, no downloads
        "-DLLAMA_BUILD_SERVER=ON",
        "-DLLAMA_BUILD_UI=OFF",
        "-DLLAMA_USE_PREBUILT_UI=OFF",
        "-DLLAMA_BUILD_APP=OFF",
        "-DLLAMA_OPENSSL=OFF",
        # the RPC backend (`--rpc HOST:PORT` in the tools) and ggml-rpc-server, in both flavors
        "-DGGML_RPC=ON",
        # tests read the exact compile commands (e.g. to check what an AMX CPU would get)
        "-DCMAKE_EXPORT_COMPILE_COMMANDS=ON",
        f"-DGGML_CCACHE={'ON' if shutil.which('ccache') else 'OFF'}",
    ]
    if not keep_amx():
        args.append(f"-DCMAKE_PROJECT_ggml_INCLUDE={NO_AMX_CMAKE}")
    if shutil.which("ninja"):
        args = ["-G", "Ninja", *args]
    if backend == "cuda":
        arch = os.environ.get("CUDA_ARCH", "90")
        args += ["-DGGML_CUDA=ON", f"-DCMAKE_CUDA_ARCHITECTURES={arch}"]
    return args


def jobs() -> int:
    return int(os.environ.get("JOBS", os.cpu_count() or 2))


def build(flavor: str, backend: str = "cpu", log=print, extra_targets: tuple[str, ...] = (),
          tools: tuple[str, ...] | None = None) -> Build:
    """Prepare the tree, configure once (again only when the arguments change), build libllama and `tools` (None:
    every binary of the flavor) and `extra_targets`."""
    target = get(flavor, backend)
    if backend == "cuda" and not (shutil.which("nvcc") or os.environ.get("CUDACXX")):
        raise BuildError("backend 'cuda' needs nvcc on PATH (or CUDACXX); none found")
    tree = prepare_tree(flavor, log)
    args = cmake_args(backend)
    args_file = target.dir / "pysparsek-cmake-args.json"
    env = ccache_env()
    if not (target.dir / "CMakeCache.txt").is_file() or not args_file.is_file() \
            or json.loads(args_file.read_text()) != args:
        log(f"pysparsek: configuring {flavor}/{backend}")
        target.dir.mkdir(parents=True, exist_ok=True)
        run(["cmake", "-S", str(tree), "-B", str(target.dir), *args], env=env)
        args_file.write_text(json.dumps(args))
    log_path = target.dir / "build.log"
    names = list(dict.fromkeys([*targets(flavor, backend, tools), *extra_targets]))
    log(f"pysparsek: building {flavor}/{backend} ({', '.join(names)}) with {jobs()} jobs; "
        f"compiler output in {log_path}")
    run_logged(["cmake", "--build", str(target.dir), "--config", "Release", "-j", str(jobs()),
                "--target", *names], env=env, log_path=log_path, label=f"{flavor}/{backend}")
    missing = [b for b in wanted(flavor, backend, tools) if not target.tool(b).is_file()]
    if missing:
        raise BuildError(f"build finished but {', '.join(missing)} missing in {target.bin_dir}")
    return target


def require(flavor: str, backend: str = "cpu", auto_build: bool = True, tools: tuple[str, ...] | None = None) -> Build:
    """A build with libllama and `tools` (None: every binary of the flavor), building what is missing if allowed.
    Callers name the tools they run, so a partial build (`pysparsek build --only`, `make demo`) serves them."""
    target = get(flavor, backend)
    if target.exists(tools):
        return target
    if not auto_build:
        raise BuildError(f"no {flavor} {backend} build in {target.dir}; run `make {flavor}-build`")
    print(f"pysparsek: {flavor} {backend} build missing, building it now", file=sys.stderr)
    return build(flavor, backend, tools=tools)
