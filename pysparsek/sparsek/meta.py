"""Read and write the Sparse-K keys of a GGUF file (%s.attention.sparsek.*) with the gguf package.

Reading checks what llama.cpp's loader checks, with a message naming the key: the integer keys are uint32 at most
their Field's maximum (INT32_MAX; max_ubatch UINT32_MAX; sparq_shared 1), mode and score_type are strings naming one
of their values, and a quantized score type needs a head size that is a multiple of its block (32). Other keys under
the prefix are not Sparse-K keys; `unknown_keys` lists them (llm.load warns about them).

Writing copies the model with new metadata into another file (through a temporary file and a rename), so the input
is never modified and a failed write leaves no half-written output.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import gguf
from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

from pysparsek.errors import UserError
from pysparsek.sparsek.settings import BY_NAME, FIELDS, Field, SettingsError, SparsekSettings, gguf_key

QUANT_BLOCK = 32                      # q8_0 and q4_0 blocks: the head size must be a multiple
QUANTIZED_SCORE_TYPES = ("q8_0", "q4_0")


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


def _value(path: Path, key: str, f: Field, field: gguf.ReaderField) -> int | str:
    """One key's value, of the type llama.cpp's loader requires (it refuses any other)."""
    vtype = field.types[0] if field.types else None
    want = gguf.GGUFValueType.UINT32 if f.is_int else gguf.GGUFValueType.STRING
    if vtype != want:
        got = vtype.name if vtype is not None else "no type"
        raise MetaError(f"{path}: {key} has type {got}; Sparse-K stores it as {want.name}")
    if f.is_int:
        value = int(field.parts[field.data[0]][0])
        if value > f.maximum:
            raise MetaError(f"{path}: {key} = {value} is out of range (at most {f.maximum})")
        return value
    raw = bytes(field.parts[field.data[0]])
    head = raw.split(b"\0", 1)[0]
    if head != raw:
        raise MetaError(f"{path}: {key} contains a NUL byte ({raw[:32]!r}); llama.cpp would read only {head!r}")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MetaError(f"{path}: {key} is not valid UTF-8 ({raw[:32]!r})") from exc


def head_size(reader: gguf.GGUFReader, arch: str) -> int | None:
    """The attention head size (K) the loader derives: key_length, else embedding_length / head_count; None when
    the file does not say it plainly (per-layer head counts)."""
    def scalar(key: str) -> int | None:
        field = reader.get_field(key)
        if field is None or not field.types or field.types[0] == gguf.GGUFValueType.ARRAY:
            return None
        value = field.contents()
        return int(value) if isinstance(value, int) and not isinstance(value, bool) else None

    key_length = scalar(f"{arch}.attention.key_length")
    if key_length:
        return key_length
    n_embd, n_head = scalar(f"{arch}.embedding_length"), scalar(f"{arch}.attention.head_count")
    return n_embd // n_head if n_embd and n_head else None


def _check_fits(path: Path, reader: gguf.GGUFReader, arch: str, s: SparsekSettings) -> None:
    if s.score_type in QUANTIZED_SCORE_TYPES:
        head = head_size(reader, arch)
        if head is not None and head % QUANT_BLOCK:
            raise MetaError(f"{path}: Sparse-K score type {s.score_type} needs a head size that is a multiple of "
                            f"{QUANT_BLOCK}; this model's is {head} (use f16 or none)")


def read(path: Path) -> SparsekSettings:
    """The Sparse-K settings stored in the file (the keys it lacks are unset), checked as llama.cpp checks them."""
    reader = _reader(path)
    arch = _arch(reader)
    found: dict[str, Any] = {}
    for f in FIELDS:
        key = gguf_key(arch, f.name)
        field = reader.get_field(key)
        if field is not None:
            found[f.name] = _value(path, key, f, field)
    try:
        settings = SparsekSettings.from_mapping(found)
    except SettingsError as exc:
        raise MetaError(f"{path}: {exc}") from exc
    _check_fits(path, reader, arch, settings)
    return settings


def unknown_keys(path: Path) -> list[str]:
    """Keys under `<arch>.attention.sparsek.` that are not Sparse-K settings (a misspelling, a newer version's):
    llama.cpp ignores them."""
    reader = _reader(path)
    prefix = gguf_key(_arch(reader), "")
    known = {gguf_key(_arch(reader), f.name) for f in FIELDS}
    return [name for name in reader.fields if name.startswith(prefix) and name not in known]


def write(src: Path, dst: Path, values: SparsekSettings | None = None, clear: bool = False) -> Path:
    """Copy src to dst, storing the fields of `values` that are set (and removing every other Sparse-K key first
    when clear is set)."""
    given = (values or SparsekSettings()).gguf_values()
    if src.resolve() == dst.resolve():
        raise MetaError("the output must be a new file; the input model is never modified in place")
    reader = _reader(src)
    arch = _arch(reader)
    _check_fits(src, reader, arch, values or SparsekSettings())
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
