"""Where things live: the project checkout and its build directory."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def build_root() -> Path:
    """Root of everything generated; PYSPARSEK_BUILD_DIR overrides (tests use it for isolation)."""
    return Path(os.environ.get("PYSPARSEK_BUILD_DIR", PROJECT_ROOT / "build")).resolve()


def cache_dir() -> Path:
    return build_root() / "cache"


def submodule_dir() -> Path:
    return PROJECT_ROOT / "llama.cpp"


def patches_dir() -> Path:
    return PROJECT_ROOT / "patches"


def flavor_root(flavor: str) -> Path:
    """build/<flavor>/ holds src/ (the exported tree) and one CMake dir per backend.

    Stock and patched trees sit at the same depth so that ccache (with CCACHE_BASEDIR) sees the
    same relative paths for both and reuses objects of files the patches do not touch.
    """
    if flavor not in ("stock", "patched"):
        raise ValueError(f"unknown flavor {flavor!r} (expected 'stock' or 'patched')")
    return build_root() / flavor


def tree_dir(flavor: str) -> Path:
    return flavor_root(flavor) / "src"


def cmake_dir(flavor: str, backend: str) -> Path:
    return flavor_root(flavor) / backend


def patch_worktree_dir() -> Path:
    return build_root() / "patch-tree"
