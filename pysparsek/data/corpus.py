"""The default evaluation text: the Jargon File 4.4.7 (public domain), from Debian's jargon-text package.

Real English prose (essays, definitions, folklore) obtained from a registry this machine can reach, pinned
by the sha256 of the packaged text. Any other text can be given with --text.
"""

from __future__ import annotations

import gzip
import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path

from pysparsek import paths
from pysparsek.errors import UserError

DEB_PACKAGE = "jargon-text"
DEB_VERSION = "4.4.7-4.1"
MEMBER = "usr/share/doc/jargon-text/jargon.txt.gz"
# sha256 of the decompressed jargon.txt shipped in jargon-text 4.4.7-4.1
TEXT_SHA256 = "40dfb4b98191a670a09a183d5798d50f243d23fdbd1495dcc0aca2ce5895ba97"
LICENSE = "The Jargon File is in the public domain (see /usr/share/doc/jargon-text/copyright)."


class CorpusError(UserError, RuntimeError):
    """The default text cannot be obtained or is not the pinned one."""


def default_text_path() -> Path:
    return paths.cache_dir() / "text" / "jargon-4.4.7.txt"


def _download_raw(dest: Path) -> None:
    if not shutil.which("apt-get") or not shutil.which("dpkg-deb"):
        raise CorpusError("the default text comes from Debian's jargon-text package, but apt-get/dpkg-deb are "
                          "missing here; pass --text FILE instead")
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run(["apt-get", "download", f"{DEB_PACKAGE}={DEB_VERSION}"], cwd=tmp,
                              capture_output=True, text=True, check=False)
        debs = list(Path(tmp).glob("*.deb"))
        if proc.returncode != 0 or not debs:
            raise CorpusError(f"apt-get download {DEB_PACKAGE}={DEB_VERSION} failed "
                              f"(run `apt-get update` first?): {proc.stderr.strip()[-300:]}")
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(Path(tmp) / "x")], check=True)
        data = gzip.decompress((Path(tmp) / "x" / MEMBER).read_bytes())
    digest = hashlib.sha256(data).hexdigest()
    if digest != TEXT_SHA256:
        raise CorpusError(f"{DEB_PACKAGE} {DEB_VERSION} text has sha256 {digest}, expected {TEXT_SHA256}")
    dest.write_bytes(data)


def extract_prose(raw: str) -> str:
    """Chapters 1-12 and the lexicon entries and appendices; drops the tables of contents and headword lists."""
    lines = raw.replace("\u00a0", " ").splitlines()  # the file uses no-break spaces in headings

    def index_of(prefix: str, start: int = 0) -> int:
        for i in range(start, len(lines)):
            if lines[i].startswith(prefix):
                return i
        raise CorpusError(f"unexpected Jargon File layout: no line starting with {prefix!r}")

    chapters = index_of("Chapter 1. Hacker Slang")
    glossary = index_of("Glossary", chapters)
    entries = index_of("   :0:", glossary)
    bibliography = index_of("Bibliography", entries)
    kept = lines[chapters:glossary] + lines[entries:bibliography]
    out: list[str] = []
    for line in kept:
        text = line.strip()
        if text or (out and out[-1]):
            out.append(text)
    return "\n".join(out).strip() + "\n"


def default_text() -> Path:
    """Path of the prose text, fetched and prepared once into the cache."""
    path = default_text_path()
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = path.with_suffix(".raw")
    if not raw.is_file():
        _download_raw(raw)
    path.write_text(extract_prose(raw.read_text(encoding="utf-8")), encoding="utf-8")
    return path
