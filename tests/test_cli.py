"""The command line: help that lists the commands, one-line errors with a non-zero exit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pysparsek import cli


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pysparsek", *args], capture_output=True, text=True, check=False)


def test_help_lists_subcommands() -> None:
    out = _run("--help").stdout
    for name in ("source", "check-patches", "patch-tree", "refresh-patches", "build", "doctor", "compare"):
        assert name in out


@pytest.mark.parametrize("value", ["0", "-4", "abc", "16,,x"])
def test_bad_topk_is_rejected(value: str) -> None:
    proc = _run("compare", "--topk", value)
    assert proc.returncode == 2
    assert "--topk" in proc.stderr


def test_topk_list_is_parsed() -> None:
    args = cli.build_parser().parse_args(["compare", "--topk", "32,64,256"])
    assert args.topk == [32, 64, 256]


def test_missing_model_is_one_clear_line(tmp_path: Path) -> None:
    proc = _run("compare", str(tmp_path / "nope.gguf"))
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"pysparsek: error: model file not found: {tmp_path / 'nope.gguf'}"


def test_non_gguf_model_is_rejected(tmp_path: Path) -> None:
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"PK\x03\x04 not a model")
    proc = _run("compare", str(fake))
    assert proc.returncode == 2
    assert "is not a GGUF file" in proc.stderr


def test_doctor_reports_the_pin() -> None:
    proc = _run("doctor")
    assert proc.returncode == 0
    assert "0c1e57098bba43ac29e6e3b677cdceebdd22334f" in proc.stdout
    assert "ccache" in proc.stdout
