"""Both builds exist with their tools; only the patched one has Sparse-K; rebuilding is incremental."""

from __future__ import annotations

import ctypes
import subprocess

import pytest

from pysparsek import build as builds

pytestmark = pytest.mark.build


@pytest.mark.parametrize("flavor", ["stock", "patched"])
def test_build_has_every_tool(flavor: str) -> None:
    b = builds.require(flavor)
    for tool in builds.binaries(flavor):
        assert b.tool(tool).is_file(), tool
    assert (b.lib_dir / "libllama.so").is_file()


def test_only_the_patched_library_has_the_sparsek_api(stock_build: builds.Build, patched_build: builds.Build) -> None:
    stock = ctypes.CDLL(str(stock_build.lib_dir / "libllama.so"))
    patched = ctypes.CDLL(str(patched_build.lib_dir / "libllama.so"))
    for name in ("llama_set_sparsek", "llama_get_sparsek", "llama_model_sparsek_params"):
        assert hasattr(patched, name)
        assert not hasattr(stock, name)


def test_second_build_has_nothing_to_do(patched_build: builds.Build) -> None:
    builds.build("patched", log=lambda *_: None)  # re-export is skipped by its stamp
    dry = subprocess.run(["cmake", "--build", str(patched_build.dir), "--", "-n", *builds.targets("patched")],
                         capture_output=True, text=True, check=True).stdout
    assert "no work to do" in dry


def test_sparsek_mask_op_matches_the_plain_reference(patched_build: builds.Build) -> None:
    """test-sparsek-mask (added by the series) checks GGML_OP_SPARSEK_MASK against a full-sort reference."""
    proc = subprocess.run([str(patched_build.tool("test-sparsek-mask")), "120"], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stdout[-3000:]
    summary = proc.stdout.strip().splitlines()[-1]
    passed, failed = (int(part.split()[0]) for part in summary.split(", "))
    assert failed == 0 and passed > 150
