"""Settings precedence (runtime API > CLI flag > GGUF metadata > off) and bad input."""

from __future__ import annotations

import dataclasses
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pysparsek.llamacpp.build import Build
from pysparsek.measure import perplexity
from pysparsek.measure.perplexity import Settings
from pysparsek.sparsek import llm, meta
from pysparsek.sparsek.settings import SettingsError, SparsekSettings

pytestmark = [pytest.mark.build, pytest.mark.slow]

BASE = Settings(ctx=256, chunks=2, batch=512, ubatch=256)


@pytest.fixture(scope="module")
def meta_model(model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("meta") / "smollm2-sparsek16.gguf"
    return meta.write(model, out, SparsekSettings(top_k=16, window=4, mode="group"))


def _ppl(build: Build, model: Path, text: Path, sparsek: SparsekSettings | None = None) -> str:
    return perplexity.measure(build, model, text, dataclasses.replace(BASE, sparsek=sparsek or SparsekSettings())).final


def test_metadata_round_trip(model: Path, meta_model: Path) -> None:
    assert meta.read(model) == SparsekSettings()
    assert meta.read(meta_model) == SparsekSettings(top_k=16, window=4, mode="group")


def test_metadata_enables_sparsek_on_load(patched_build: Build, model: Path, meta_model: Path,
                                          short_text: Path) -> None:
    from_meta = _ppl(patched_build, meta_model, short_text)
    from_flags = _ppl(patched_build, model, short_text, SparsekSettings(top_k=16, window=4, mode="group"))
    dense = _ppl(patched_build, model, short_text)
    assert from_meta == from_flags
    assert from_meta != dense


def test_cli_flags_override_metadata(patched_build: Build, model: Path, meta_model: Path, short_text: Path) -> None:
    assert _ppl(patched_build, meta_model, short_text, SparsekSettings(top_k=0)) == \
        _ppl(patched_build, model, short_text)
    assert _ppl(patched_build, meta_model, short_text, SparsekSettings(top_k=32)) == \
        _ppl(patched_build, model, short_text, SparsekSettings(top_k=32, window=4, mode="group"))


def test_runtime_api_overrides_metadata(patched_build: Build, meta_model: Path, open_llm: Callable[..., Any]) -> None:
    m = open_llm(meta_model, n_ctx=256, n_threads=2)
    assert llm.model_sparsek(m) == SparsekSettings(top_k=16, window=4, mode="group").resolved()
    assert llm.get_sparsek(m) == SparsekSettings(top_k=16, window=4, mode="group").resolved()
    llm.set_sparsek(m, SparsekSettings(top_k=0))
    assert llm.get_sparsek(m).top_k == 0


@pytest.mark.parametrize(("flags", "message"), [
    (["--sparsek-mode", "diagonal"], "--sparsek-mode must be head, group or token"),
    (["--sparsek-topk", "-3"], "--sparsek-topk must be >= 0"),
    (["--sparsek-window", "-1"], "--sparsek-window must be >= 0"),
])
def test_bad_flags_are_clear_errors(patched_build: Build, model: Path, short_text: Path, flags: list[str],
                                    message: str) -> None:
    proc = subprocess.run([str(patched_build.tool("llama-perplexity")), "-m", str(model), "-f", str(short_text),
                           "-c", "256", "--chunks", "1", *flags], capture_output=True, text=True, check=False)
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr


def test_unknown_mode_in_metadata_fails_at_load(patched_build: Build, model: Path, tmp_path: Path,
                                                short_text: Path) -> None:
    import gguf
    from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

    bad = tmp_path / "bad-mode.gguf"
    with pytest.raises(SettingsError):
        meta.write(model, bad, SparsekSettings(top_k=8, mode="diagonal"))
    assert not bad.exists()

    # written behind pysparsek's back, llama.cpp itself must refuse it with a clear message
    reader = gguf.GGUFReader(model)
    writer = gguf.GGUFWriter(bad, arch="llama")
    copy_with_new_metadata(reader, writer, {
        "llama.attention.sparsek.top_k": MetadataDetails(gguf.GGUFValueType.UINT32, 8),
        "llama.attention.sparsek.mode": MetadataDetails(gguf.GGUFValueType.STRING, "diagonal"),
    }, [])
    proc = subprocess.run([str(patched_build.tool("llama-perplexity")), "-m", str(bad), "-f", str(short_text),
                           "-c", "256", "--chunks", "1"], capture_output=True, text=True, check=False)
    assert proc.returncode != 0
    assert "unknown Sparse-K mode 'diagonal'" in proc.stdout + proc.stderr


def test_llama_bench_reports_sparsek_fields(patched_build: Build, model: Path) -> None:
    import json

    proc = subprocess.run([str(patched_build.tool("llama-bench")), "-m", str(model), "-p", "64", "-n", "0",
                           "-r", "1", "-t", "2", "-sk", "0,16", "-skm", "group", "-o", "json"],
                          capture_output=True, text=True, check=True)
    records = json.loads(proc.stdout)
    assert [(r["sparsek_topk"], r["sparsek_mode"]) for r in records] == [(0, "group"), (16, "group")]
    # nothing given: the model's (no) metadata
    assert {(r["sparsek_window"], r["sparsek_stride"], r["sparsek_sinks"]) for r in records} == {(0, 0, 0)}


def test_llama_bench_sweeps_stride_and_sinks(patched_build: Build, model: Path) -> None:
    import json

    proc = subprocess.run([str(patched_build.tool("llama-bench")), "-m", str(model), "-p", "64", "-n", "0",
                           "-r", "1", "-t", "2", "-sk", "16", "-sks", "0,16", "-skn", "4", "-o", "json"],
                          capture_output=True, text=True, check=True)
    records = json.loads(proc.stdout)
    assert [(r["sparsek_topk"], r["sparsek_stride"], r["sparsek_sinks"]) for r in records] == [(16, 0, 4),
                                                                                                (16, 16, 4)]
    md = subprocess.run([str(patched_build.tool("llama-bench")), "-m", str(model), "-p", "64", "-n", "0",
                         "-r", "1", "-t", "2", "-sk", "16", "-sks", "16", "-skn", "4", "-o", "md"],
                        capture_output=True, text=True, check=True)
    assert "sks" in md.stdout and "skn" in md.stdout
    for flag in ("-sks", "-skn"):
        bad = subprocess.run([str(patched_build.tool("llama-bench")), "-m", str(model), flag, "-1"],
                             capture_output=True, text=True, check=False)
        assert bad.returncode != 0, flag


def test_llama_bench_sweeps_sparq_shared_and_refuses_other_values(patched_build: Build, model: Path) -> None:
    import json

    proc = subprocess.run([str(patched_build.tool("llama-bench")), "-m", str(model), "-p", "0", "-n", "2",
                           "-r", "1", "-t", "2", "-sk", "16", "-skm", "group", "-sksr", "8", "-sksq", "0,1",
                           "-o", "json"], capture_output=True, text=True, check=True)
    records = json.loads(proc.stdout)
    assert [(r["sparsek_sparq_r"], r["sparsek_sparq_shared"]) for r in records] == [(8, 0), (8, 1)]
    bad = subprocess.run([str(patched_build.tool("llama-bench")), "-m", str(model), "-sksq", "2"],
                         capture_output=True, text=True, check=False)
    assert bad.returncode != 0
    assert "invalid parameter for argument: -sksq" in bad.stdout + bad.stderr
