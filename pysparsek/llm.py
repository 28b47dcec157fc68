"""llama-cpp-python bound to the patched libllama, with Sparse-K set through the new C API.

llama-cpp-python loads libllama from LLAMA_CPP_LIB_PATH when it is first imported, so the variable
must point at the patched build before that import; one process can hold only one libllama.
"""

from __future__ import annotations

import ctypes
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from pysparsek import build as builds

MODES = {"head": 0, "group": 1, "token": 2}


class BindingError(RuntimeError):
    """llama_cpp is bound to another library, or the library lacks the Sparse-K API."""


class SparsekParams(ctypes.Structure):
    # mirrors struct llama_sparsek_params in the patched llama.h
    _fields_ = [("top_k", ctypes.c_int32), ("window", ctypes.c_int32), ("stride", ctypes.c_int32),
                ("sinks", ctypes.c_int32), ("mode", ctypes.c_int)]


@dataclass(frozen=True)
class Sparsek:
    top_k: int = 0
    window: int = 0
    stride: int = 0
    sinks: int = 0
    mode: str = "head"


def bind(lib_dir: Path | None = None) -> ModuleType:
    """Import llama_cpp on the library in lib_dir (default: the patched CPU build)."""
    lib_dir = (lib_dir or builds.require("patched").lib_dir).resolve()
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
    return all(hasattr(lib, name) for name in ("llama_set_sparsek", "llama_get_sparsek", "llama_model_sparsek_params"))


def _api(lib: ctypes.CDLL) -> ctypes.CDLL:
    if not has_sparsek_api(lib):
        raise BindingError("the loaded libllama has no Sparse-K API (is it the stock build?)")
    lib.llama_set_sparsek.argtypes = [ctypes.c_void_p, SparsekParams]
    lib.llama_set_sparsek.restype = ctypes.c_int32
    lib.llama_get_sparsek.argtypes = [ctypes.c_void_p]
    lib.llama_get_sparsek.restype = SparsekParams
    lib.llama_model_sparsek_params.argtypes = [ctypes.c_void_p]
    lib.llama_model_sparsek_params.restype = SparsekParams
    return lib


def _from_c(p: SparsekParams) -> Sparsek:
    names = {v: k for k, v in MODES.items()}
    return Sparsek(p.top_k, p.window, p.stride, p.sinks, names.get(p.mode, str(p.mode)))


def get_sparsek(llm: Any) -> Sparsek:
    """The Sparse-K settings of a llama_cpp.Llama's context."""
    return _from_c(_api(library()).llama_get_sparsek(llm.ctx))


def model_sparsek(llm: Any) -> Sparsek:
    """The Sparse-K settings in the model's GGUF metadata."""
    return _from_c(_api(library()).llama_model_sparsek_params(llm.model))


def set_sparsek(llm: Any, params: Sparsek) -> None:
    if params.mode not in MODES:
        raise ValueError(f"unknown Sparse-K mode {params.mode!r}; choose one of {', '.join(MODES)}")
    c = SparsekParams(params.top_k, params.window, params.stride, params.sinks, MODES[params.mode])
    rc = _api(library()).llama_set_sparsek(llm.ctx, c)
    if rc == -1:
        raise ValueError(f"invalid Sparse-K settings {params}")
    if rc != 0:
        raise BindingError(f"this model cannot take Sparse-K attention (llama_set_sparsek returned {rc}; "
                           "llama.cpp's log says why)")


SCORE_TYPES = ("none", "f16", "q8_0", "q4_0")


def has_score_type_api(lib: ctypes.CDLL | None = None) -> bool:
    lib = lib or library()
    return all(hasattr(lib, name) for name in ("llama_set_sparsek_score_type", "llama_get_sparsek_score_type",
                                                "llama_set_sparsek_max_ubatch"))


def _api2(lib: ctypes.CDLL) -> ctypes.CDLL:
    if not has_score_type_api(lib):
        raise BindingError("the loaded libllama has no Sparse-K score-type / max-ubatch API (an older patched build?)")
    # ggml_type travels as a C int; names are converted by the library itself, so no enum value is copied here
    lib.llama_sparsek_score_type_from_name.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_int)]
    lib.llama_sparsek_score_type_from_name.restype = ctypes.c_bool
    lib.llama_sparsek_score_type_name.argtypes = [ctypes.c_int]
    lib.llama_sparsek_score_type_name.restype = ctypes.c_char_p
    lib.llama_set_sparsek_score_type.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.llama_set_sparsek_score_type.restype = ctypes.c_int32
    lib.llama_get_sparsek_score_type.argtypes = [ctypes.c_void_p]
    lib.llama_get_sparsek_score_type.restype = ctypes.c_int
    lib.llama_get_sparsek_score_size.argtypes = [ctypes.c_void_p]
    lib.llama_get_sparsek_score_size.restype = ctypes.c_size_t
    lib.llama_set_sparsek_max_ubatch.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    lib.llama_set_sparsek_max_ubatch.restype = None
    lib.llama_get_sparsek_max_ubatch.argtypes = [ctypes.c_void_p]
    lib.llama_get_sparsek_max_ubatch.restype = ctypes.c_uint32
    return lib


def set_score_type(llm: Any, name: str) -> None:
    """Score the selection from a copy of K in this type ("f16", "q8_0", "q4_0"); "none" scores from K itself."""
    lib = _api2(library())
    value = ctypes.c_int()
    if not lib.llama_sparsek_score_type_from_name(name.encode(), ctypes.byref(value)):
        raise ValueError(f"unknown Sparse-K score type {name!r}; choose one of {', '.join(SCORE_TYPES)}")
    rc = lib.llama_set_sparsek_score_type(llm.ctx, value.value)
    if rc != 0:
        raise BindingError(f"llama_set_sparsek_score_type({name}) returned {rc}; llama.cpp's log says why")


def get_score_type(llm: Any) -> str:
    lib = _api2(library())
    name = lib.llama_sparsek_score_type_name(lib.llama_get_sparsek_score_type(llm.ctx))
    return name.decode() if name else "unknown"


def score_size(llm: Any) -> int:
    """Bytes of the context's Sparse-K score copy of K (0 without one)."""
    return int(_api2(library()).llama_get_sparsek_score_size(llm.ctx))


def set_max_ubatch(llm: Any, n_tokens: int) -> None:
    """Apply Sparse-K only to ubatches of at most n_tokens tokens (1 = decoding only); 0 = every ubatch."""
    if n_tokens < 0:
        raise ValueError("max_ubatch must be >= 0")
    _api2(library()).llama_set_sparsek_max_ubatch(llm.ctx, n_tokens)


def get_max_ubatch(llm: Any) -> int:
    return int(_api2(library()).llama_get_sparsek_max_ubatch(llm.ctx))


def load(model_path: str | os.PathLike[str], *, topk: int | None = None, window: int | None = None,
         stride: int | None = None, sinks: int | None = None, mode: str | None = None,
         score_type: str | None = None, max_ubatch: int | None = None,
         lib_dir: Path | None = None, **kwargs: Any) -> Any:
    """A llama_cpp.Llama on the patched library; given Sparse-K values override the model's metadata."""
    llama_cpp = bind(lib_dir)
    kwargs.setdefault("verbose", False)
    llm = llama_cpp.Llama(model_path=str(model_path), **kwargs)
    if any(v is not None for v in (topk, window, stride, sinks, mode)):
        cur = get_sparsek(llm)
        set_sparsek(llm, Sparsek(
            top_k=cur.top_k if topk is None else topk,
            window=cur.window if window is None else window,
            stride=cur.stride if stride is None else stride,
            sinks=cur.sinks if sinks is None else sinks,
            mode=cur.mode if mode is None else mode,
        ))
    if score_type is not None:
        set_score_type(llm, score_type)
    if max_ubatch is not None:
        set_max_ubatch(llm, max_ubatch)
    return llm
