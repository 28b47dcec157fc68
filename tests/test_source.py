"""Source acquisition: the pin, the verification of the tree, exports."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from pysparsek import paths
from pysparsek.llamacpp import source
from pysparsek.llamacpp.pin import LLAMA_CPP_PIN


def _git(cwd: Path, *args: str) -> str:
    env = {**os.environ, "GIT_CEILING_DIRECTORIES": str(cwd.parent), "GIT_AUTHOR_NAME": "t",
           "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout.strip()


def test_pin_matches_submodule_gitlink() -> None:
    if not (paths.PROJECT_ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    entry = subprocess.run(["git", "ls-files", "-s", "llama.cpp"], cwd=paths.PROJECT_ROOT, check=True,
                           capture_output=True, text=True).stdout.split()
    assert entry[0] == "160000", "llama.cpp must be a submodule (gitlink)"
    assert entry[1] == LLAMA_CPP_PIN


def test_acquire_verifies_the_pinned_commit() -> None:
    src = source.acquire()
    assert src.commit == LLAMA_CPP_PIN
    assert (src.path / "CMakeLists.txt").is_file()
    assert src.origin in ("submodule", "sdist")


def test_tampered_source_is_rejected(tmp_path: Path) -> None:
    # a shared clone of the real pinned tree, so the cached source itself is never touched
    src = source.acquire()
    clone = tmp_path / "llama.cpp"
    subprocess.run(["git", "clone", "-q", "--shared", str(src.path), str(clone)], check=True,
                   env={**os.environ, "GIT_CEILING_DIRECTORIES": str(src.path.parent)})
    _git(clone, "checkout", "-q", LLAMA_CPP_PIN)
    assert source.verify(clone) == LLAMA_CPP_PIN

    victim = clone / "src" / "llama.cpp"
    victim.write_bytes(victim.read_bytes() + b"\n// tampered\n")
    with pytest.raises(source.SourceError, match="modified files"):
        source.verify(clone)


def test_wrong_commit_is_rejected(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "CMakeLists.txt").write_text("project(x)\n")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "x")
    head = _git(repo, "rev-parse", "HEAD")
    assert source.verify(repo, expected=head) == head
    with pytest.raises(source.SourceError, match="refusing to build"):
        source.verify(repo)  # the pin, which this repo is not


def test_non_git_tree_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "CMakeLists.txt").write_text("")
    with pytest.raises(source.SourceError, match="not a git checkout"):
        source.verify(tmp_path)


def test_sync_tree_rewrites_only_changed_files(tmp_path: Path) -> None:
    src, dest = tmp_path / "a", tmp_path / "b"
    (src / "d").mkdir(parents=True)
    (src / "same.txt").write_text("same")
    (src / "d" / "changed.txt").write_text("new")
    (dest / "d").mkdir(parents=True)
    (dest / "same.txt").write_text("same")
    (dest / "d" / "changed.txt").write_text("old")
    (dest / "stale.txt").write_text("gone")
    os.utime(dest / "same.txt", (1_000_000, 1_000_000))

    assert source.sync_tree(src, dest) == 2  # one rewrite, one removal
    assert (dest / "d" / "changed.txt").read_text() == "new"
    assert not (dest / "stale.txt").exists()
    assert (dest / "same.txt").stat().st_mtime == 1_000_000
