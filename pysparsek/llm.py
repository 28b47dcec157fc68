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


def load(model_path: str | os.PathLike[str], *, topk: int | None = None, window: int | None = None,
         stride: int | None = None, sinks: int | None = None, mode: str | None = None,
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
    return llm
