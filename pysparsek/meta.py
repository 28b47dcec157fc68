"""Read and write the Sparse-K keys of a GGUF file (%s.attention.sparsek.*) with the gguf package.

Writing copies the model with new metadata into another file (through a temporary file and a rename), so the
input is never modified and a failed write leaves no half-written output.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import gguf
from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

INT_KEYS = ("top_k", "window", "stride", "sinks", "max_ubatch")
STRING_KEYS = ("mode", "score_type")
MODES = ("head", "group", "token")
SCORE_TYPES = ("f16", "q8_0", "q4_0")  # "none" is the absence of the key


class MetaError(RuntimeError):
    """Bad metadata values or an unusable GGUF file."""


def _arch(reader: gguf.GGUFReader) -> str:
    field = reader.get_field(gguf.Keys.General.ARCHITECTURE)
    if field is None:
        raise MetaError("the GGUF file has no general.architecture")
    return str(field.contents())


def key(arch: str, name: str) -> str:
    return f"{arch}.attention.sparsek.{name}"


def _reader(path: Path) -> gguf.GGUFReader:
    try:
        return gguf.GGUFReader(path)
    except (ValueError, OSError) as exc:
        raise MetaError(f"cannot read {path} as GGUF: {exc}") from exc


def read(path: Path) -> dict[str, Any]:
    """The Sparse-K keys present in the file (short names: top_k, window, stride, sinks, max_ubatch, mode,
    score_type)."""
    reader = _reader(path)
    arch = _arch(reader)
    found: dict[str, Any] = {}
    for name in (*INT_KEYS, *STRING_KEYS):
        field = reader.get_field(key(arch, name))
        if field is not None:
            found[name] = field.contents()
    return found


def validate(values: dict[str, Any]) -> None:
    for name, value in values.items():
        if name in INT_KEYS:
            if not isinstance(value, int) or value < 0:
                raise MetaError(f"{name} must be an integer >= 0, got {value!r}")
        elif name == "mode":
            if value not in MODES:
                raise MetaError(f"mode must be one of {', '.join(MODES)}, got {value!r}")
        elif name == "score_type":
            if value not in SCORE_TYPES:
                raise MetaError(f"score_type must be one of {', '.join(SCORE_TYPES)}, got {value!r}")
        else:
            raise MetaError(f"unknown Sparse-K key {name!r}")


def write(src: Path, dst: Path, values: dict[str, Any] | None = None, clear: bool = False) -> Path:
    """Copy src to dst, setting `values` (and removing every Sparse-K key first when clear is set)."""
    values = dict(values or {})
    validate(values)
    if src.resolve() == dst.resolve():
        raise MetaError("the output must be a new file; the input model is never modified in place")
    reader = _reader(src)
    arch = _arch(reader)
    new = {}
    for name, value in values.items():
        if name in STRING_KEYS:
            new[key(arch, name)] = MetadataDetails(gguf.GGUFValueType.STRING, value)
        else:
            new[key(arch, name)] = MetadataDetails(gguf.GGUFValueType.UINT32, int(value))
    remove = [key(arch, n) for n in (*INT_KEYS, *STRING_KEYS) if clear and key(arch, n) not in new]
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    try:
        writer = gguf.GGUFWriter(tmp, arch=arch, endianess=reader.endianess)
        alignment = reader.get_field(gguf.Keys.General.ALIGNMENT)
        if alignment is not None:
            writer.data_alignment = int(alignment.contents())
        copy_with_new_metadata(reader, writer, new, remove)
        tmp.replace(dst)
    finally:
        tmp.unlink(missing_ok=True)
    return dst
