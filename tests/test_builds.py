"""Both builds exist with their tools; only the patched one has Sparse-K; rebuilding is incremental."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pysparsek.llamacpp import build as builds

pytestmark = pytest.mark.build


@pytest.mark.parametrize("flavor", ["stock", "patched"])
def test_build_has_every_tool(flavor: str) -> None:
    b = builds.require(flavor)
    for tool in builds.binaries(flavor):
        assert b.tool(tool).is_file(), tool
    assert (b.lib_dir / "libllama.so").is_file()


def test_each_build_has_what_runs_on_it() -> None:
    """Stock: what the tests run on stock; test-backend-ops (nothing to check on a CPU-only build, the longest
    compile) by default for CUDA only."""
    assert builds.binaries("stock") == ["llama-perplexity", "ggml-rpc-server"]
    assert builds.binaries("stock", "cuda") == builds.binaries("stock")
    assert {"llama-server", "llama-bench", "llama-quantize", "test-sparsek-mask"} <= set(builds.binaries("patched"))
    assert "test-backend-ops" not in builds.binaries("patched")
    assert "test-backend-ops" in builds.binaries("patched", "cuda")


def _exported(lib: str, names: list[str]) -> list[bool]:
    # each library in its own process: libllama finds libggml by soname, and one process holds one of each
    code = "import ctypes, sys; lib = ctypes.CDLL(sys.argv[1]); print(*[hasattr(lib, n) for n in sys.argv[2:]])"
    out = subprocess.run([sys.executable, "-c", code, lib, *names], capture_output=True, text=True, check=True)
    return [v == "True" for v in out.stdout.split()]


def test_only_the_patched_library_has_the_sparsek_api(stock_build: builds.Build, patched_build: builds.Build) -> None:
    names = ["llama_set_sparsek", "llama_get_sparsek", "llama_model_sparsek_params"]
    assert _exported(str(patched_build.lib_dir / "libllama.so"), names) == [True] * 3
    assert _exported(str(stock_build.lib_dir / "libllama.so"), names) == [False] * 3


def test_second_build_has_nothing_to_do(patched_build: builds.Build) -> None:
    builds.build("patched", log=lambda *_: None)  # re-export is skipped by its stamp
    builds.build("patched", log=lambda *_: None)
    steps = [line for line in (patched_build.dir / "build.log").read_text().splitlines() if line.startswith("[")]
    # llama-server's UI step always runs (upstream), finds its (empty) assets unchanged and so rebuilds nothing
    assert all("Provisioning UI assets" in line for line in steps), steps
    assert not any(word in line for line in steps for word in ("Building", "Linking")), steps


def test_sparsek_mask_op_matches_the_plain_reference(patched_build: builds.Build) -> None:
    """test-sparsek-mask (added by the series) checks GGML_OP_SPARSEK_MASK against a full-sort reference."""
    proc = subprocess.run([str(patched_build.tool("test-sparsek-mask")), "120"], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stdout[-3000:]
    summary = proc.stdout.strip().splitlines()[-1]
    passed, failed = (int(part.split()[0]) for part in summary.split(", "))
    assert failed == 0 and passed > 150


def test_a_partial_build_serves_the_tools_a_caller_names(tmp_path, monkeypatch) -> None:
    """`pysparsek build --only` / `make demo` build libllama and some tools: `require` with those tools takes such a
    build as it is, and without them (every tool) wants the rest."""
    b = builds.Build("patched", "cpu", tmp_path)
    b.bin_dir.mkdir()
    for name in ("libllama.so", "llama-bench", "llama-perplexity"):
        (b.bin_dir / name).touch()
    monkeypatch.setattr(builds, "get", lambda flavor, backend="cpu": b)
    assert b.exists(("llama-bench", "llama-perplexity")) and b.exists(())
    assert not b.exists() and not b.exists(("llama-server",))
    assert builds.require("patched", tools=("llama-bench",), auto_build=False) is b
    with pytest.raises(builds.BuildError, match="no patched cpu build"):
        builds.require("patched", tools=("llama-server",), auto_build=False)
    assert builds.targets("patched", tools=("llama-bench",)) == ["llama", "llama-bench"]
