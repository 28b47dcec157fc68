"""Obtain the pinned llama.cpp source: the submodule when populated, else the PyPI sdist.

Either way the commit is verified against the pin and the tree must be unmodified; build trees
are exported copies under build/, the source itself is never written to.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

from pysparsek import paths
from pysparsek.errors import UserError
from pysparsek.llamacpp.pin import LLAMA_CPP_PIN, SDIST_NAME, SDIST_VERSION
from pysparsek.proc import ToolError, run


class SourceError(UserError, RuntimeError):
    """The pinned source is missing, unreachable, or not what the pin says."""


@dataclass(frozen=True)
class Source:
    path: Path
    origin: str  # "submodule" or "sdist"
    commit: str


def _git(repo: Path, *args: str) -> str:
    # Stop git from discovering an enclosing repository (the project itself) above `repo`.
    env = {"GIT_CEILING_DIRECTORIES": str(repo.parent)}
    proc = run(["git", "-C", str(repo), *args], env=env, check=False)
    if proc.returncode != 0:
        raise SourceError(f"git {' '.join(args)} failed in {repo}:\n{proc.stdout.strip()}")
    return proc.stdout.strip()


def verify(tree: Path, expected: str = LLAMA_CPP_PIN) -> str:
    """Check that `tree` is a git checkout of `expected` with no modified tracked files."""
    if not (tree / ".git").exists():
        raise SourceError(f"{tree} is not a git checkout; cannot verify it is llama.cpp {expected}")
    commit = _git(tree, "rev-parse", "HEAD")
    if commit != expected:
        raise SourceError(
            f"llama.cpp source at {tree} is at commit {commit}, but the pin is {expected}; refusing to build from it"
        )
    dirty = _git(tree, "status", "--porcelain", "--untracked-files=no")
    if dirty:
        files = ", ".join(line[3:] for line in dirty.splitlines()[:5])
        raise SourceError(f"llama.cpp source at {tree} has modified files ({files}); refusing to build from it")
    return commit


def submodule_populated(path: Path | None = None) -> bool:
    path = path or paths.submodule_dir()
    return (path / "CMakeLists.txt").is_file() and (path / ".git").exists()


def sdist_archive() -> Path:
    return paths.cache_dir() / f"{SDIST_NAME.replace('-', '_')}-{SDIST_VERSION}.tar.gz"


def sdist_vendor_dir() -> Path:
    return paths.cache_dir() / "sdist" / f"{SDIST_NAME.replace('-', '_')}-{SDIST_VERSION}" / "vendor" / "llama.cpp"


def download_sdist() -> Path:
    """Fetch the llama-cpp-python sdist from PyPI once into the cache."""
    archive = sdist_archive()
    if archive.is_file():
        return archive
    archive.parent.mkdir(parents=True, exist_ok=True)
    print(f"pysparsek: downloading {SDIST_NAME}=={SDIST_VERSION} sdist from PyPI (llama.cpp {LLAMA_CPP_PIN[:12]})",
          file=sys.stderr)
    try:
        run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
             f"{SDIST_NAME}=={SDIST_VERSION}", "-d", str(archive.parent)])
    except ToolError as exc:
        raise SourceError(f"could not download the {SDIST_NAME} sdist from PyPI: {exc}") from exc
    if not archive.is_file():
        raise SourceError(f"pip did not produce {archive.name} in {archive.parent}")
    return archive


def extract_sdist(archive: Path) -> Path:
    vendor = sdist_vendor_dir()
    marker = vendor.parent.parent / ".extracted"
    if marker.is_file() and vendor.is_dir():
        return vendor
    dest = paths.cache_dir() / "sdist"
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="tar")
    if not vendor.is_dir():
        raise SourceError(f"{archive.name} has no vendor/llama.cpp")
    marker.write_text(LLAMA_CPP_PIN + "\n")
    return vendor


def acquire() -> Source:
    """Locate (and if needed download) the pinned tree, verified."""
    sub = paths.submodule_dir()
    if submodule_populated(sub):
        return Source(sub, "submodule", verify(sub))
    vendor = extract_sdist(download_sdist())
    return Source(vendor, "sdist", verify(vendor))


def locate() -> Source | None:
    """The source if it is already present and valid, without downloading anything."""
    sub = paths.submodule_dir()
    try:
        if submodule_populated(sub):
            return Source(sub, "submodule", verify(sub))
        if sdist_vendor_dir().is_dir():
            return Source(sdist_vendor_dir(), "sdist", verify(sdist_vendor_dir()))
    except SourceError:
        return None
    return None


def export_commit(src: Source, dest: Path) -> None:
    """Write the committed content of the pin (not the working files) into dest (emptied first)."""
    env = {**os.environ, "GIT_CEILING_DIRECTORIES": str(src.path.parent)}
    data = subprocess.run(["git", "-C", str(src.path), "archive", "--format=tar", src.commit],
                          env=env, capture_output=True, check=False)
    if data.returncode != 0:
        raise SourceError(f"git archive failed in {src.path}: {data.stderr.decode().strip()}")
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(data.stdout)) as tar:
        tar.extractall(dest, filter="tar")


def sync_tree(src: Path, dest: Path) -> int:
    """Make dest's files equal src's, rewriting only files whose bytes differ.

    Untouched files keep their mtimes, so Ninja rebuilds only what a patch change affects.
    Returns the number of files written or removed.
    """
    changed = 0
    dest.mkdir(parents=True, exist_ok=True)
    wanted: set[Path] = set()
    for path in src.rglob("*"):
        rel = path.relative_to(src)
        wanted.add(rel)
        target = dest / rel
        if path.is_dir() and not path.is_symlink():
            target.mkdir(exist_ok=True)
            continue
        if path.is_symlink():
            if target.is_symlink() and os.readlink(target) == os.readlink(path):
                continue
            if target.exists() or target.is_symlink():
                target.unlink()
            target.symlink_to(os.readlink(path))
            changed += 1
            continue
        if target.is_file() and not target.is_symlink() and _same_bytes(path, target):
            continue
        if target.is_symlink():
            target.unlink()
        shutil.copy2(path, target)
        changed += 1
    for path in sorted(dest.rglob("*"), reverse=True):
        if path.relative_to(dest) not in wanted:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            changed += 1
    return changed


def _same_bytes(a: Path, b: Path) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return False
    return a.read_bytes() == b.read_bytes()


def hash_files(files: list[Path]) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()
