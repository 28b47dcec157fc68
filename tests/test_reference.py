"""Independent reference: the patched llama.cpp's Sparse-K logits against a NumPy Llama that applies the
documented top-K rule itself (tests/numpy_llama.py shares no code with ggml).

ggml quantizes activations for its Q4_1 matrix products, so logits differ slightly even without Sparse-K; the
checks are that the patched build matches the sparse reference about as closely as dense matches dense, and far
more closely than dense llama.cpp matches the sparse reference (a selection bug that still runs fails that).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pysparsek import corpus, llm

import numpy_llama

pytestmark = [pytest.mark.build, pytest.mark.slow]

N_TOKENS = 200


@pytest.fixture(scope="module")
def weights(model: Path) -> numpy_llama.LlamaWeights:
    return numpy_llama.load(model)


@pytest.fixture(scope="module")
def tokens(model: Path) -> list[int]:
    m = llm.load(model, n_ctx=512, n_threads=2)
    text = corpus.default_text().read_text(encoding="utf-8")[:4000]
    toks = m.tokenize(text.encode(), add_bos=False)[:N_TOKENS]
    m.close()
    return toks


def _ggml_logits(model: Path, tokens: list[int], flash_attn: bool, **sparsek: object) -> np.ndarray:
    m = llm.load(model, n_ctx=512, n_batch=512, n_ubatch=512, n_threads=2, logits_all=True,
                 flash_attn=flash_attn, **sparsek)
    m.eval(tokens)
    out = np.array(m.scores[: len(tokens)], copy=True)
    m.close()
    return out


@pytest.fixture(scope="module")
def dense_pair(weights: numpy_llama.LlamaWeights, model: Path, tokens: list[int]) -> tuple[np.ndarray, np.ndarray]:
    return numpy_llama.logits(weights, tokens), _ggml_logits(model, tokens, False)


def test_dense_matches_the_reference(dense_pair: tuple[np.ndarray, np.ndarray]) -> None:
    ref, ggml = dense_pair
    agree = float(np.mean(ref.argmax(-1) == ggml.argmax(-1)))
    print(f"\ndense: KL(ref||ggml) = {numpy_llama.kl(ref, ggml):.5f}, argmax agreement {agree:.3f}")
    assert numpy_llama.kl(ref, ggml) < 0.02
    assert agree > 0.9


@pytest.mark.parametrize("flash_attn", [False, True], ids=["softmax", "flash-attn"])
@pytest.mark.parametrize(("top_k", "mode"), [(4, "head"), (16, "head"), (16, "group"), (16, "token")])
def test_sparsek_matches_the_reference(weights: numpy_llama.LlamaWeights, model: Path, tokens: list[int],
                                       dense_pair: tuple[np.ndarray, np.ndarray], top_k: int, mode: str,
                                       flash_attn: bool) -> None:
    ref_dense, ggml_dense = dense_pair
    ref = numpy_llama.logits(weights, tokens, top_k=top_k, mode=mode)
    ggml = _ggml_logits(model, tokens, flash_attn, topk=top_k, mode=mode)

    kl_sparse = numpy_llama.kl(ref, ggml)
    kl_vs_dense = numpy_llama.kl(ref, ggml_dense)
    agree = float(np.mean(ref.argmax(-1) == ggml.argmax(-1)))
    print(f"\nK={top_k} {mode} fa={flash_attn}: KL(ref||ggml) = {kl_sparse:.5f}, "
          f"KL(ref||ggml dense) = {kl_vs_dense:.5f}, argmax agreement {agree:.3f}")
    # rows with <= K visible cells are dense in both: they must agree there like dense does
    assert np.array_equal(ggml[:top_k], ggml_dense[:top_k])
    assert kl_sparse < 0.03
    assert kl_sparse < kl_vs_dense / 4
    assert agree > 0.9
