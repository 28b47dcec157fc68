"""Memory of the Sparse-K score copy of K (score_type), measured through the C API on a real context."""

from __future__ import annotations

from pathlib import Path

import gguf

from pysparsek.measure.results import ScoreCopy
from pysparsek.sparsek import llm
from pysparsek.sparsek.settings import SparsekSettings


def _bytes_per_value(name: str) -> float:
    block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[name.upper()]]
    return type_size / block


# the copy holds the same cells and layers as K, so its size relative to an F16 K follows from its type
BYTES_PER_VALUE = {name: _bytes_per_value(name) for name in ("f16", "q8_0", "q4_0")}


def measure(model: Path, n_ctx: int, score_type: str) -> ScoreCopy:
    """Bytes of the score copy for a context of n_ctx cells, and the F16 K it mirrors (same cells and layers)."""
    if score_type not in BYTES_PER_VALUE:
        raise ValueError(f"unknown score type {score_type!r}; choose one of {', '.join(BYTES_PER_VALUE)}")
    m = llm.load(model, SparsekSettings(score_type=score_type), n_ctx=n_ctx, n_batch=32, n_ubatch=32, n_threads=1,
                 flash_attn=True)
    try:
        size = llm.score_size(m)
    finally:
        m.close()
    k_f16 = round(size * 2.0 / BYTES_PER_VALUE[score_type])
    return ScoreCopy(score_type, n_ctx, size, k_f16, size / k_f16 if k_f16 else 0.0)
