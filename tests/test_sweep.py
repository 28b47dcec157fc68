"""`pysparsek sweep`: models.txt parsing, skipping what cannot be fetched, one combined report; the Python API."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pysparsek import api
from pysparsek.data import catalog, models
from pysparsek.data.models import ModelError


def test_models_txt_parses() -> None:
    entries = catalog.parse(Path(__file__).resolve().parent.parent / "models.txt")
    assert entries[0].name == "smollm2-135m" and entries[0].kind == "pypi"
    assert {e.kind for e in entries} <= {"pypi", "file", "hf"}


def test_bad_lines_are_reported(tmp_path: Path) -> None:
    bad = tmp_path / "models.txt"
    bad.write_text("onlyname\n")
    with pytest.raises(ModelError, match=r"models\.txt:1"):
        catalog.parse(bad)
    bad.write_text("x ftp:somewhere\n")
    with pytest.raises(ModelError, match="unknown source"):
        catalog.parse(bad)


@pytest.mark.build
@pytest.mark.slow
def test_sweep_skips_unreachable_models_and_writes_one_report(tmp_path: Path, short_text: Path, patched_build,
                                                              stock_build) -> None:
    listing = tmp_path / "models.txt"
    listing.write_text(f"local  file:{models.default_model()}  Q4_1  the default model\n"
                       "remote hf:nobody-here/no-such-repo-xyz:model.gguf  Q4_K_M  needs the Hub\n")
    out = tmp_path / "sweep"
    proc = subprocess.run([sys.executable, "-m", "pysparsek", "sweep", str(listing), "--topk", "32", "-c", "128",
                           "--chunks", "2", "--exact", "--cache-types", "none", "--skip-speed", "--quiet", "--text",
                           str(short_text), "--out", str(out)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "skipping remote" in proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert [s["name"] for s in summary] == ["local", "remote"]
    assert "skipped" in summary[1] and summary[0]["quality"]["identical"] is True
    assert (out / "local" / "results.json").is_file() and (out / "summary.md").is_file()


def test_api_meta_round_trip(tmp_path: Path) -> None:
    out = api.meta_set(models.default_model(), tmp_path / "m.gguf", api.SparsekSettings(top_k=32, mode="token"))
    assert api.meta_show(out) == api.SparsekSettings(top_k=32, mode="token")
    assert api.meta_show(api.meta_clear(out, tmp_path / "n.gguf")) == api.SparsekSettings()
