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

from pysparsek.errors import UserError
from pysparsek.sparsek.settings import BY_NAME, FIELDS, SettingsError, SparsekSettings, gguf_key


class MetaError(UserError, RuntimeError):
    """Bad metadata values or an unusable GGUF file."""


def _arch(reader: gguf.GGUFReader) -> str:
    field = reader.get_field(gguf.Keys.General.ARCHITECTURE)
    if field is None:
        raise MetaError("the GGUF file has no general.architecture")
    return str(field.contents())


def _reader(path: Path) -> gguf.GGUFReader:
    try:
        return gguf.GGUFReader(path)
    except (ValueError, OSError) as exc:
        raise MetaError(f"cannot read {path} as GGUF: {exc}") from exc


def read(path: Path) -> SparsekSettings:
    """The Sparse-K settings stored in the file (the keys it lacks are unset)."""
    reader = _reader(path)
    arch = _arch(reader)
    found: dict[str, Any] = {}
    for f in FIELDS:
        field = reader.get_field(gguf_key(arch, f.name))
        if field is not None:
            found[f.name] = field.contents()
    try:
        return SparsekSettings.from_mapping(found)
    except SettingsError as exc:
        raise MetaError(f"{path}: {exc}") from exc


def write(src: Path, dst: Path, values: SparsekSettings | None = None, clear: bool = False) -> Path:
    """Copy src to dst, storing the fields of `values` that are set (and removing every other Sparse-K key first
    when clear is set)."""
    given = (values or SparsekSettings()).gguf_values()
    if src.resolve() == dst.resolve():
        raise MetaError("the output must be a new file; the input model is never modified in place")
    reader = _reader(src)
    arch = _arch(reader)
    new = {gguf_key(arch, name): MetadataDetails(gguf.GGUFValueType.UINT32 if BY_NAME[name].is_int
                                                 else gguf.GGUFValueType.STRING, value)
           for name, value in given.items()}
    remove = [gguf_key(arch, f.name) for f in FIELDS if clear and gguf_key(arch, f.name) not in new]
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
