"""`pysparsek meta`: Sparse-K keys of a GGUF file, written into copies, never into the input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pysparsek.data import models, tiny_model
from pysparsek.sparsek import meta
from pysparsek.sparsek.settings import SparsekSettings


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pysparsek", "meta", *args], capture_output=True, text=True,
                          check=False)


@pytest.fixture(scope="module")
def model() -> Path:
    return models.default_model()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few hundred KB of GGUF: the tests that only write and read keys copy this, not the 98 MB model (each copy
    of SmolLM2 through gguf-py takes ~10 s on 2 cores); the round trip above keeps the real model."""
    return tiny_model.write(tmp_path_factory.mktemp("tiny") / "tiny.gguf")


def test_set_show_clear_round_trip(model: Path, tmp_path: Path) -> None:
    before = models.sha256_file(model)
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    proc = _run("set", str(model), "-o", str(a), "--topk", "64", "--window", "16", "--mode", "token", "--exact")
    assert proc.returncode == 0, proc.stderr
    assert meta.read(a) == SparsekSettings(top_k=64, window=16, mode="token")
    assert "top_k = 64" in _run("show", str(a)).stdout
    assert _run("clear", str(a), "-o", str(b)).returncode == 0
    assert meta.read(b) == SparsekSettings()
    assert "no Sparse-K metadata" in _run("show", str(b)).stdout
    assert models.sha256_file(model) == before  # the input is untouched
    # everything else is copied: same tensors, same other keys
    import gguf

    ra, rm = gguf.GGUFReader(b), gguf.GGUFReader(model)
    assert [t.name for t in ra.tensors] == [t.name for t in rm.tensors]
    assert set(ra.fields) == set(rm.fields)


def test_set_replaces_only_given_keys(tiny: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    meta.write(tiny, a, SparsekSettings(top_k=64, sinks=4))
    meta.write(a, b, SparsekSettings(top_k=128))
    assert meta.read(b) == SparsekSettings(top_k=128, sinks=4)


@pytest.mark.parametrize(("args", "message"), [
    (["set", "{model}", "--topk", "8"], "give -o/--output"),
    (["set", "{model}", "-o", "{model}", "--topk", "8"], "never modified in place"),
    (["set", "{model}", "-o", "{out}"], "needs at least one of"),
    (["show", "{bad}"], "cannot read"),
])
def test_errors_are_one_line(model: Path, tmp_path: Path, args: list[str], message: str) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00truncated")
    argv = [a.format(model=model, out=tmp_path / "o.gguf", bad=bad) for a in args]
    proc = _run(*argv)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert proc.stderr.count("\n") == 1


def test_bad_values_in_a_file_are_a_meta_error(tiny: Path, tmp_path: Path) -> None:
    """Keys written behind pysparsek's back are checked on reading, naming the file."""
    import gguf
    from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

    bad = tmp_path / "bad.gguf"
    writer = gguf.GGUFWriter(bad, arch="llama")
    copy_with_new_metadata(gguf.GGUFReader(tiny), writer, {
        "llama.attention.sparsek.mode": MetadataDetails(gguf.GGUFValueType.STRING, "diagonal")}, [])
    with pytest.raises(meta.MetaError, match=f"{bad}: unknown Sparse-K mode 'diagonal'"):
        meta.read(bad)


def test_a_bare_topk_also_stores_the_recommended_settings(tiny: Path, tmp_path: Path) -> None:
    from pysparsek.sparsek.recommended import RECOMMENDED

    out = tmp_path / "rec.gguf"
    proc = _run("set", str(tiny), "-o", str(out), "--topk", "128")
    assert proc.returncode == 0, proc.stderr
    assert meta.read(out) == RECOMMENDED.replace(top_k=128)


def test_explicit_settings_mean_what_they_say(tiny: Path, tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.gguf", tmp_path / "b.gguf", tmp_path / "c.gguf"
    assert _run("set", str(tiny), "-o", str(a), "--topk", "64", "--window", "0", "--mode", "head").returncode == 0
    assert meta.read(a).window == 0 and meta.read(a).mode == "head"
    # what the file already has is not replaced by a recommendation either
    assert _run("set", str(a), "-o", str(b), "--topk", "256").returncode == 0
    assert meta.read(b) == SparsekSettings(top_k=256, window=0, mode="head", sinks=4, score_type="q4_0", max_ubatch=1)
    assert _run("set", str(tiny), "-o", str(c), "--topk", "64", "--exact").returncode == 0
    assert meta.read(c) == SparsekSettings(top_k=64)
