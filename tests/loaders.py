"""What many tests load: contexts that are closed whatever happens, logits of a batch, tokens of the real text."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from pysparsek.data import corpus
from pysparsek.sparsek import llm
from pysparsek.sparsek.settings import SparsekSettings


@contextlib.contextmanager
def opened(model: Path, sparsek: SparsekSettings | None = None, **kwargs: Any) -> Iterator[Any]:
    """llm.load of exactly the settings given (no recommended ones added), closed on leaving the block (an assert
    failing inside included)."""
    kwargs.setdefault("exact", True)
    m = llm.load(model, sparsek, **kwargs)
    try:
        yield m
    finally:
        m.close()


def eval_logits(m: Any, tokens: list[int]) -> np.ndarray:
    """Evaluate tokens after what the context holds; their logits (the context needs logits_all)."""
    start = m.n_tokens
    m.eval(tokens)
    return np.array(m.scores[start: start + len(tokens)], copy=True)


def logits(model: Path, tokens: list[int], sparsek: SparsekSettings | None = None, **kwargs: Any) -> np.ndarray:
    """Logits of every token of one batch in a fresh context."""
    with opened(model, sparsek, logits_all=True, **kwargs) as m:
        return eval_logits(m, tokens)


def text_tokens(model: Path, n_tokens: int, n_chars: int, add_bos: bool = False) -> list[int]:
    """The first n_tokens tokens of the first n_chars characters of the default text (the Jargon File)."""
    with opened(model, n_ctx=512, n_threads=2) as m:
        text = corpus.default_text().read_text(encoding="utf-8")[:n_chars]
        return m.tokenize(text.encode(), add_bos=add_bos)[:n_tokens]
