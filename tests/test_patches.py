"""The patch series: applies to the pin, fails loudly when corrupted, and is what the patch tree regenerates."""

from __future__ import annotations

import filecmp
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pysparsek import paths
from pysparsek.llamacpp import patches


def test_series_lists_existing_patches() -> None:
    series = patches.read_series()
    assert series, "patches/series is empty"
    assert all(p.suffix == ".patch" for p in series)


def _corrupted_copy(tmp_path: Path) -> tuple[Path, str]:
    bad = tmp_path / "patches"
    shutil.copytree(paths.patches_dir(), bad)
    victim = patches.read_series(bad)[-1]
    text = victim.read_text()
    # change a context line of the first hunk so it no longer matches the pinned source
    lines = text.splitlines(keepends=True)
    first_hunk = next(i for i, line in enumerate(lines) if line.startswith("@@"))
    ctx = next(i for i in range(first_hunk + 1, len(lines)) if lines[i].startswith(" ") and lines[i].strip())
    lines[ctx] = " this line is not in llama.cpp\n"
    victim.write_text("".join(lines))
    return bad, victim.name


# Each check exports the pin and applies the series (tens of seconds on the 2-core CI machine), so the series is
# applied once through `make check-patches` (pysparsek.llamacpp.patches.check behind it) for the committed series
# and once for a corrupted copy, and `make patch-tree` applies it with git am.


def test_make_check_patches_fails_loudly_on_a_corrupted_patch(tmp_path: Path) -> None:
    """The corrupted patch is named on the way out of patches.check (PatchError) and make exits non-zero."""
    bad, name = _corrupted_copy(tmp_path)
    proc = subprocess.run(["make", "-s", "check-patches", f"PATCH_DIR={bad}", f"PYTHON={sys.executable}"],
                          cwd=paths.PROJECT_ROOT, capture_output=True, text=True, check=False)
    assert proc.returncode != 0
    assert "pysparsek: error: " in proc.stderr and name in proc.stderr


def test_missing_patch_in_series_is_reported(tmp_path: Path) -> None:
    bad = tmp_path / "patches"
    bad.mkdir()
    (bad / "series").write_text("0001-does-not-exist.patch\n")
    with pytest.raises(patches.PatchError, match="does not exist"):
        patches.read_series(bad)


@pytest.mark.slow
def test_patch_tree_regenerates_the_committed_series(tmp_path: Path) -> None:
    """The committed .patch files are exactly what `make patch-tree` + `make refresh-patches` produce."""
    tree = patches.make_patch_tree(tmp_path / "tree")
    out = tmp_path / "out"
    out.mkdir()
    regenerated = patches.refresh(tree=tree, patch_dir=out)
    assert [p.name for p in regenerated] == [p.name for p in patches.read_series()]
    for p in regenerated:
        assert filecmp.cmp(p, paths.patches_dir() / p.name, shallow=False), f"{p.name} differs from its regeneration"


def test_make_check_patches_passes_on_the_committed_series() -> None:
    # the default PATCH_DIR is relative ("patches"): it must work from the project root as the README says
    proc = subprocess.run(["make", "-s", "check-patches", f"PYTHON={sys.executable}"], cwd=paths.PROJECT_ROOT,
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"all {len(patches.read_series())} patches apply cleanly" in proc.stdout
