"""The comparison shared by the independent-reference tests: the patched build's Sparse-K logits against a NumPy
model applying the documented rule, judged against the rule's own near-tie sensitivity."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import loaders
import numpy as np

from pysparsek.sparsek.settings import SparsekSettings

import numpy_llama


@dataclass
class Dense:
    flash_attn: bool
    logits: np.ndarray
    kl_floor: float  # KL(reference || ggml) without Sparse-K: ggml's own rounding


def text_tokens(model: Path, n_tokens: int) -> list[int]:
    return loaders.text_tokens(model, n_tokens, n_chars=4000)


def ggml_logits(model: Path, tokens: list[int], flash_attn: bool,
                sparsek: SparsekSettings | None = None) -> np.ndarray:
    return loaders.logits(model, tokens, sparsek, n_ctx=512, n_batch=512, n_ubatch=512, n_threads=2,
                          flash_attn=flash_attn)


@dataclass
class Verdict:
    ok: bool
    report: str
    ggml: np.ndarray


def check(reference: Callable[..., np.ndarray], rule: dict, model: Path, tokens: list[int], dense: Dense,
          settings: SparsekSettings, min_agree: float, slack: float = 0.0) -> Verdict:
    """Does the build's output under `settings` match `reference(tokens, **rule)` within what noise explains?

    The bound scales with the rule's own sensitivity (the KL that 0.01 of noise on the scores the selection sees
    causes in the reference itself), plus ggml's dense rounding floor and a fixed `slack`; the build must also be
    far closer to the sparse reference than dense llama.cpp is.
    """
    wrong = {k: v for k, v in rule.items() if k in ("lowest", "select_past_window", "raw_max") and v}
    ref = reference(tokens, **rule)
    sensitivity = numpy_llama.kl(ref, reference(tokens, selection_noise=0.01, **rule))
    ggml = ggml_logits(model, tokens, dense.flash_attn, settings)
    kl_sparse = numpy_llama.kl(ref, ggml)
    kl_vs_dense = numpy_llama.kl(ref, dense.logits)
    agree = float(np.mean(ref.argmax(-1) == ggml.argmax(-1)))
    bound = 2 * sensitivity + 3 * dense.kl_floor + slack
    report = (f"{settings} fa={dense.flash_attn}{' wrong rule ' + str(wrong) if wrong else ''}: "
              f"KL(ref||ggml) = {kl_sparse:.2e} (bound {bound:.2e}), KL(ref||ggml dense) = {kl_vs_dense:.2e}, "
              f"argmax agreement {agree:.3f}")
    ok = bool(np.isfinite(kl_sparse)) and kl_sparse < bound and 3 * kl_sparse < kl_vs_dense and agree > min_agree
    return Verdict(ok, report, ggml)
