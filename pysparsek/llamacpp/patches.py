"""The patch series: read it, apply it, and the developer loop that regenerates it.

Developers never hand-edit a .patch: `patch-tree` makes a git working copy of the pin with one
commit per patch, they edit and amend there, and `refresh` runs `git format-patch` back into
patches/.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from pysparsek import paths
from pysparsek.errors import UserError
from pysparsek.llamacpp import source
from pysparsek.proc import run

PIN_TAG = "pin"
_GIT_ID = {
    "GIT_AUTHOR_NAME": "pysparsek", "GIT_AUTHOR_EMAIL": "pysparsek@localhost",
    "GIT_COMMITTER_NAME": "pysparsek", "GIT_COMMITTER_EMAIL": "pysparsek@localhost",
}


class PatchError(UserError, RuntimeError):
    """A patch of the series does not apply, or the series file is wrong."""


def series_file(patch_dir: Path | None = None) -> Path:
    return (patch_dir or paths.patches_dir()) / "series"


def read_series(patch_dir: Path | None = None) -> list[Path]:
    """Patches in application order (absolute paths); blank lines and '#' comments are ignored."""
    patch_dir = (patch_dir or paths.patches_dir()).resolve()  # git apply runs inside the tree, not here
    sfile = series_file(patch_dir)
    if not sfile.is_file():
        raise PatchError(f"{sfile} is missing")
    result = []
    for lineno, raw in enumerate(sfile.read_text().splitlines(), 1):
        name = raw.split("#", 1)[0].strip()
        if not name:
            continue
        patch = patch_dir / name
        if not patch.is_file():
            raise PatchError(f"{sfile}:{lineno}: {name} does not exist")
        result.append(patch)
    return result


def series_hash(patch_dir: Path | None = None) -> str:
    return source.hash_files(read_series(patch_dir))


def _git_env(tree: Path) -> dict[str, str]:
    # `tree` lives inside the project checkout; keep git from treating it as part of that repo.
    return {"GIT_CEILING_DIRECTORIES": str(tree.parent), **_GIT_ID}


def apply_series(tree: Path, patches: list[Path]) -> None:
    """Apply each patch to a plain (non-git) tree; the first one that fails is named."""
    env = _git_env(tree)
    for patch in patches:
        proc = run(["git", "apply", "--check", "--whitespace=nowarn", str(patch)], cwd=tree, env=env, check=False)
        if proc.returncode != 0:
            raise PatchError(f"patch {patch.name} does not apply to llama.cpp {source.LLAMA_CPP_PIN[:12]}:\n"
                             f"{proc.stdout.strip()}")
        run(["git", "apply", "--whitespace=nowarn", str(patch)], cwd=tree, env=env)


def check(patch_dir: Path | None = None) -> list[Path]:
    """Apply the series to a scratch copy of the pin; raise PatchError naming a failing patch."""
    patches = read_series(patch_dir)
    src = source.acquire()
    with tempfile.TemporaryDirectory(prefix="pysparsek-check-", dir=paths.build_root().parent
                                     if paths.build_root().exists() else None) as tmp:
        tree = Path(tmp) / "llama.cpp"
        source.export_commit(src, tree)
        apply_series(tree, patches)
    return patches


def make_patch_tree(dest: Path | None = None, force: bool = False) -> Path:
    """A git working copy of the pin with the series applied as one commit each (tag 'pin' = base)."""
    dest = dest or paths.patch_worktree_dir()
    if dest.exists():
        if not force:
            raise PatchError(f"{dest} exists; refresh from it, or pass --force to recreate it (losing edits)")
        shutil.rmtree(dest)
    src = source.acquire()
    source.export_commit(src, dest)
    env = _git_env(dest)
    git = ["git", "-C", str(dest)]
    run([*git, "init", "-q", "-b", "main"], env=env)
    run([*git, "add", "-A", "-f"], env=env)
    run([*git, "commit", "-q", "--no-verify", "-m", f"llama.cpp {src.commit}"], env=env)
    run([*git, "tag", PIN_TAG], env=env)
    patches = read_series()
    if patches:
        run([*git, "am", "-q", "--3way", "--keep-cr", *map(str, patches)], env=env)
    return dest


def refresh(tree: Path | None = None, patch_dir: Path | None = None) -> list[Path]:
    """Regenerate patches/ and patches/series from the commits pin..HEAD of the patch tree."""
    tree = tree or paths.patch_worktree_dir()
    patch_dir = patch_dir or paths.patches_dir()
    if not (tree / ".git").exists():
        raise PatchError(f"no patch tree at {tree}; run `make patch-tree` first")
    env = _git_env(tree)
    status = run(["git", "-C", str(tree), "status", "--porcelain", "--untracked-files=no"], env=env).stdout
    if status.strip():
        raise PatchError(f"{tree} has uncommitted changes; commit (or amend) them first:\n{status}")
    with tempfile.TemporaryDirectory() as tmp:
        run(["git", "-C", str(tree), "format-patch", "-q", "--no-signature", "--zero-commit",
             "--no-stat", "--no-numbered", "-o", tmp, f"{PIN_TAG}..HEAD"], env=env)
        new = sorted(Path(tmp).glob("*.patch"))
        for old in patch_dir.glob("*.patch"):
            old.unlink()
        written = []
        for patch in new:
            target = patch_dir / patch.name
            shutil.copyfile(patch, target)
            written.append(target)
    header = "# Applied in this order to llama.cpp at the pin. Regenerate with `make refresh-patches`.\n"
    series_file(patch_dir).write_text(header + "".join(p.name + "\n" for p in written))
    return written


def export_patched(dest: Path) -> None:
    """Export pin + series into dest."""
    src = source.acquire()
    source.export_commit(src, dest)
    apply_series(dest, read_series())
