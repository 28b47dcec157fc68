"""llama-cpp-python bound to the patched libllama, with Sparse-K set through the new C API.

llama-cpp-python loads libllama from LLAMA_CPP_LIB_PATH when it is first imported, so the variable
must point at the patched build before that import; one process can hold only one libllama.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

from pysparsek.errors import UserError
from pysparsek.llamacpp import build as builds
from pysparsek.sparsek.settings import (
    C_API_FIELDS,
    C_FIELDS,
    FIELDS,
    CParams,
    SettingsError,
    SparsekSettings,
    from_c,
    to_c,
)


class BindingError(UserError, RuntimeError):
    """llama_cpp is bound to another library, or the library lacks the Sparse-K API."""


# The Sparse-K C API of the patched llama.h, declared once: name -> (argtypes, restype), as llama-cpp-python
# declares its own functions. ggml_type travels as a C int; names are converted by the library itself, so no enum
# value is copied here.
_CTX = _MODEL = ctypes.c_void_p
SPARSEK_API: dict[str, tuple[list[Any], Any]] = {
    "llama_set_sparsek": ([_CTX, CParams], ctypes.c_int32),
    "llama_get_sparsek": ([_CTX], CParams),
    "llama_model_sparsek_params": ([_MODEL], CParams),
    "llama_sparsek_score_type_from_name": ([ctypes.c_char_p, ctypes.POINTER(ctypes.c_int)], ctypes.c_bool),
    "llama_sparsek_score_type_name": ([ctypes.c_int], ctypes.c_char_p),
    "llama_set_sparsek_score_type": ([_CTX, ctypes.c_int], ctypes.c_int32),
    "llama_get_sparsek_score_type": ([_CTX], ctypes.c_int),
    "llama_model_sparsek_score_type": ([_MODEL], ctypes.c_int),
    "llama_get_sparsek_score_size": ([_CTX], ctypes.c_size_t),
}
# the integer settings with their own functions (settings.Field.c_api): set, get, and the model's metadata
for _f in C_API_FIELDS:
    SPARSEK_API[f"llama_set_sparsek_{_f.c_api}"] = ([_CTX, ctypes.c_uint32], ctypes.c_int32 if _f.c_status else None)
    SPARSEK_API[f"llama_get_sparsek_{_f.c_api}"] = ([_CTX], ctypes.c_uint32)
    SPARSEK_API[f"llama_model_sparsek_{_f.c_api}"] = ([_MODEL], ctypes.c_uint32)


def bind(lib_dir: Path | None = None) -> ModuleType:
    """Import llama_cpp on the library in lib_dir (default: the patched CPU build)."""
    lib_dir = (lib_dir or builds.require("patched", tools=()).lib_dir).resolve()
    if "llama_cpp" in sys.modules:
        current = os.environ.get("LLAMA_CPP_LIB_PATH")
        if current is None or Path(current).resolve() != lib_dir:
            raise BindingError(f"llama_cpp is already imported on {current or 'its bundled library'}; "
                               f"it cannot be rebound to {lib_dir} in this process")
        return sys.modules["llama_cpp"]
    os.environ["LLAMA_CPP_LIB_PATH"] = str(lib_dir)
    import llama_cpp

    return llama_cpp


def library() -> ctypes.CDLL:
    """The libllama handle llama_cpp loaded."""
    import llama_cpp.llama_cpp as low

    return low._lib


def loaded_library_path() -> Path:
    """The file the process actually mapped for libllama (from /proc/self/maps)."""
    library()
    for line in Path("/proc/self/maps").read_text().splitlines():
        parts = line.split()
        if parts and "/libllama.so" in parts[-1]:
            return Path(parts[-1])
    raise BindingError("libllama is not mapped in this process")


def has_sparsek_api(lib: ctypes.CDLL | None = None) -> bool:
    lib = lib or library()
    return all(hasattr(lib, name) for name in SPARSEK_API)


@functools.cache
def _declared(lib: ctypes.CDLL) -> ctypes.CDLL:
    missing = [name for name in SPARSEK_API if not hasattr(lib, name)]
    if missing:
        raise BindingError(f"the loaded libllama lacks the Sparse-K API ({', '.join(missing)}): is it the stock "
                           "build?")
    for name, (argtypes, restype) in SPARSEK_API.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = argtypes, restype
    return lib


def api() -> ctypes.CDLL:
    """The loaded libllama with the Sparse-K functions declared (once per library)."""
    return _declared(library())


def _score_type_name(lib: ctypes.CDLL, value: int) -> str:
    name = lib.llama_sparsek_score_type_name(value)
    if not name:
        raise BindingError(f"the library reported an unknown Sparse-K score type {value}")
    return name.decode()


def get_sparsek(llm: Any) -> SparsekSettings:
    """Every Sparse-K setting of a llama_cpp.Llama's context (metadata and later changes combined)."""
    lib = api()
    return SparsekSettings(**from_c(lib.llama_get_sparsek(llm.ctx)),
                           score_type=_score_type_name(lib, lib.llama_get_sparsek_score_type(llm.ctx)),
                           **{f.name: int(getattr(lib, f"llama_get_sparsek_{f.c_api}")(llm.ctx)) for f in C_API_FIELDS})


def model_sparsek(llm: Any) -> SparsekSettings:
    """The Sparse-K settings in the model's GGUF metadata (off where it has none)."""
    lib = api()
    return SparsekSettings(**from_c(lib.llama_model_sparsek_params(llm.model)),
                           score_type=_score_type_name(lib, lib.llama_model_sparsek_score_type(llm.model)),
                           **{f.name: int(getattr(lib, f"llama_model_sparsek_{f.c_api}")(llm.model))
                              for f in C_API_FIELDS})


def set_sparsek(llm: Any, settings: SparsekSettings) -> None:
    """Apply the fields that are set over the context's current ones; takes effect on the next decode."""
    lib = api()
    given = settings.given()
    if any(name in given for name in C_FIELDS):
        rc = lib.llama_set_sparsek(llm.ctx, to_c(settings.resolved(get_sparsek(llm))))
        if rc == -1:
            raise SettingsError(f"invalid Sparse-K settings {settings}")
        if rc != 0:
            raise BindingError(f"this model cannot take Sparse-K attention (llama_set_sparsek returned {rc}; "
                               "llama.cpp's log says why)")
    if settings.score_type is not None:
        value = ctypes.c_int()
        if not lib.llama_sparsek_score_type_from_name(settings.score_type.encode(), ctypes.byref(value)):
            raise SettingsError(f"the library does not know the Sparse-K score type {settings.score_type!r}")
        rc = lib.llama_set_sparsek_score_type(llm.ctx, value.value)
        if rc != 0:
            raise BindingError(f"llama_set_sparsek_score_type({settings.score_type}) returned {rc}; llama.cpp's "
                               "log says why")
    for f in C_API_FIELDS:
        value = getattr(settings, f.name)
        if value is None:
            continue
        rc = getattr(lib, f"llama_set_sparsek_{f.c_api}")(llm.ctx, value)
        if f.c_status and rc != 0:
            raise BindingError(f"llama_set_sparsek_{f.c_api}({value}) returned {rc}; llama.cpp's log says why")


def score_size(llm: Any) -> int:
    """Bytes of the context's Sparse-K score copy of K (0 without one)."""
    return int(api().llama_get_sparsek_score_size(llm.ctx))


def load(model_path: str | os.PathLike[str], sparsek: SparsekSettings | None = None, *,
         lib_dir: Path | None = None, exact: bool = False, check_metadata: bool = True, **kwargs: Any) -> Any:
    """A llama_cpp.Llama on the patched library; the fields of `sparsek` that are set override the model's
    metadata. A top_k > 0 comes with the recommended settings (recommended.RECOMMENDED) that neither `sparsek` nor
    the model's metadata give, unless `exact`. The model's Sparse-K metadata is checked first (a MetaError naming
    the key), unless `check_metadata` is off. kwargs go to llama_cpp.Llama."""
    from pysparsek.sparsek import meta, recommended

    present = None
    if check_metadata:
        present = meta.read(Path(model_path))
        unknown = meta.unknown_keys(Path(model_path))
        if unknown:
            warnings.warn(f"{model_path}: ignoring {', '.join(unknown)}: not Sparse-K settings (known: "
                          f"{', '.join(f.name for f in FIELDS)})", stacklevel=2)
    if sparsek is not None and not exact:
        sparsek = recommended.complete(sparsek, present)
    llama_cpp = bind(lib_dir)
    kwargs.setdefault("verbose", False)
    llm = llama_cpp.Llama(model_path=str(model_path), **kwargs)
    if sparsek is not None:
        try:
            set_sparsek(llm, sparsek)
        except Exception:
            llm.close()
            raise
    return llm
