"""Quality in the decode regime: a dense prompt, then tokens decoded one at a time under Sparse-K.

`llama-perplexity` evaluates every token as a row of a prompt batch, which is not how sparse decoding is used. Here,
for each chunk of the text, the first `prompt` tokens are evaluated densely (Sparse-K off), then the next `decode`
tokens are fed one per llama_decode call with the setting under test; each decoded token's logits are compared
with the same run made densely: perplexity over the decoded tokens, KL(dense || sparse) and top-1 agreement.
Everything runs in one process on the patched library (llama-cpp-python), switching settings through the C API;
dense is the patched library with Sparse-K off, which is bit-identical to stock (tests/test_identity.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pysparsek.errors import UserError
from pysparsek.sparsek import llm
from pysparsek.sparsek.settings import SparsekSettings


class DecodeRegimeError(UserError, RuntimeError):
    """The text is too short or a setting cannot be applied."""


@dataclass(frozen=True)
class Setting:
    """A Sparse-K setting (every field resolved; top_k 0 = dense) in a KV cache of one type."""
    sparsek: SparsekSettings = field(default_factory=SparsekSettings.off)
    cache_type: str = "f16"   # the KV cache's K and V type (f16, q8_0, q4_0): the alternative users pick

    def __post_init__(self) -> None:
        object.__setattr__(self, "sparsek", self.sparsek.resolved())

    @property
    def label(self) -> str:
        return self.sparsek.label + ("" if self.cache_type == "f16" else f", cache {self.cache_type}")


@dataclass
class Result:
    setting: Setting
    ppl: float
    kl_mean: float | None      # None for dense
    kl_stderr: float | None
    top1_agreement_pct: float | None
    n_tokens: int


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def chunk_tokens(tokens: list[int], prompt: int, decode: int, chunks: int) -> list[list[int]]:
    """Consecutive, non-overlapping chunks of prompt + decode + 1 tokens (the +1 is the last token's target)."""
    size = prompt + decode + 1
    if len(tokens) < size * chunks:
        raise DecodeRegimeError(f"the text has {len(tokens)} tokens; {chunks} chunks of {prompt} prompt + {decode} "
                                f"decoded tokens need {size * chunks}")
    return [tokens[i * size:(i + 1) * size] for i in range(chunks)]


def decode_logits(m: Any, chunk: list[int], prompt: int, setting: Setting) -> np.ndarray:
    """Logits [decode, n_vocab] of each decoded token of one chunk under `setting` (the prompt is dense)."""
    import llama_cpp

    # dense prompt; the score copy is written while the prompt is evaluated, as it would be in use
    llm.set_sparsek(m, setting.sparsek.replace(top_k=0))
    m.reset()
    m.eval(chunk[:prompt])
    llm.set_sparsek(m, setting.sparsek)
    n_vocab = m.n_vocab()
    out = np.empty((len(chunk) - 1 - prompt, n_vocab), dtype=np.float32)
    for i, tok in enumerate(chunk[prompt:-1]):
        m.eval([tok])
        out[i] = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(m.ctx, -1), shape=(n_vocab,))
    return out


CACHE_TYPES = {"f16": "GGML_TYPE_F16", "q8_0": "GGML_TYPE_Q8_0", "q4_0": "GGML_TYPE_Q4_0"}


def measure(model: Path, text: Path, settings: list[Setting], *, prompt: int = 1024, decode: int = 256,
            chunks: int = 4, threads: int | None = None, flash_attn: bool = True, ngl: int = 0,
            progress: Callable[[str], None] | None = None) -> list[Result]:
    """Dense (f16 cache) first, then every setting; results in the order given, dense prepended.

    Settings with another cache type run in a context with that K/V cache type and are compared with the same
    dense f16 reference.
    """
    llama_cpp = llm.bind()  # the patched library, before anything imports llama_cpp

    dense = Setting()
    ordered = [dense] + [s for s in settings if s != dense]
    by_cache: dict[str, list[Setting]] = {}
    for s in ordered:
        if s.cache_type not in CACHE_TYPES:
            raise DecodeRegimeError(f"unknown cache type {s.cache_type!r}; choose one of {', '.join(CACHE_TYPES)}")
        by_cache.setdefault(s.cache_type, []).append(s)
    nll: dict[Setting, list[np.ndarray]] = {s: [] for s in ordered}
    kl: dict[Setting, list[np.ndarray]] = {s: [] for s in ordered}
    same: dict[Setting, list[np.ndarray]] = {s: [] for s in ordered}
    ref: dict[int, np.ndarray] = {}
    for cache_type, group in by_cache.items():  # f16 first: it holds the dense reference
        ggml_type = getattr(llama_cpp, CACHE_TYPES[cache_type])
        m = llm.load(model, n_ctx=prompt + decode + 16, n_batch=512, n_ubatch=512, flash_attn=flash_attn,
                     n_gpu_layers=ngl, type_k=ggml_type, type_v=ggml_type,
                     **({"n_threads": threads, "n_threads_batch": threads} if threads else {}))
        try:
            tokens = m.tokenize(text.read_text(encoding="utf-8", errors="replace").encode(), add_bos=False)
            parts = chunk_tokens(tokens, prompt, decode, chunks)
            for c, chunk in enumerate(parts):
                targets = np.array(chunk[prompt + 1:])
                for s in group:
                    if progress:
                        progress(f"chunk {c + 1}/{len(parts)}: {s.label}")
                    lp = log_softmax(decode_logits(m, chunk, prompt, s))
                    nll[s].append(-lp[np.arange(len(targets)), targets])
                    if s == dense:
                        ref[c] = lp
                        continue
                    kl[s].append((np.exp(ref[c]) * (ref[c] - lp)).sum(axis=-1))
                    same[s].append(ref[c].argmax(axis=-1) == lp.argmax(axis=-1))
        finally:
            m.close()
    results = []
    for s in ordered:
        all_nll = np.concatenate(nll[s])
        if s == dense:
            results.append(Result(s, float(np.exp(all_nll.mean())), None, None, None, len(all_nll)))
            continue
        all_kl = np.concatenate(kl[s])
        results.append(Result(s, float(np.exp(all_nll.mean())), float(all_kl.mean()),
                              float(all_kl.std(ddof=1) / np.sqrt(len(all_kl))) if len(all_kl) > 1 else 0.0,
                              100.0 * float(np.concatenate(same[s]).mean()), len(all_nll)))
    return results
