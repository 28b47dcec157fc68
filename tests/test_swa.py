"""Sparse-K on a sliding-window model (Gemma-2 layout, iSWA KV cache, attention soft-capping).

The model is a small random-weight GGUF (tests/tiny_gemma2.py); no registry ships a real SWA model. Checks:
stock identity (off, K >= context) through llama-perplexity on real text with 4 sequences per batch, and the
patched build's Sparse-K logits against tests/numpy_gemma2.py, which applies the documented rule inside each
layer's own mask (sliding window for even layers).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import loaders
import numpy as np
import pytest

from pysparsek.llamacpp.build import Build
from pysparsek.measure import perplexity
from pysparsek.measure.perplexity import Settings
from pysparsek.sparsek.settings import SparsekSettings

import numpy_gemma2
import numpy_llama
import reference_check
import tiny_gemma2
from reference_check import Dense

pytestmark = [pytest.mark.build, pytest.mark.slow]

CTX = 256
CHUNKS = 3
N_TOKENS = 200   # > the sliding window (48), so window and sinks meet cells the window forbids


@pytest.fixture(scope="module")
def swa_model(model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_gemma2.write(tmp_path_factory.mktemp("gemma2") / "tiny-gemma2.gguf", tokenizer_from=model)


def _ppl(build: Build, model: Path, text: Path, out: Path, flash_attn: str,
         sparsek: SparsekSettings | None = None) -> perplexity.PerplexityResult:
    settings = Settings(ctx=CTX, chunks=CHUNKS, batch=CTX * 4, ubatch=CTX, flash_attn=flash_attn,
                        sparsek=sparsek or SparsekSettings())  # 4 sequences per batch
    return perplexity.measure(build, model, text, settings, save_logits=out)


@pytest.mark.parametrize("fa", ["off", "on"], ids=["softmax", "flash-attn"])
def test_swa_model_off_and_large_topk_equal_stock(stock_build: Build, patched_build: Build, swa_model: Path,
                                                  short_text: Path, tmp_path: Path, fa: str) -> None:
    stock = _ppl(stock_build, swa_model, short_text, tmp_path / "stock.bin", flash_attn=fa)
    for name, sk in (("off", SparsekSettings(top_k=0)), ("K=4*ctx", SparsekSettings(top_k=4 * CTX, mode="group"))):
        out = tmp_path / f"{name}.bin"
        res = _ppl(patched_build, swa_model, short_text, out, fa, sk)
        assert (res.chunks, res.final) == (stock.chunks, stock.final), name
        assert out.read_bytes() == (tmp_path / "stock.bin").read_bytes(), f"{name}: log-probabilities differ"
    sparse = _ppl(patched_build, swa_model, short_text, tmp_path / "k8.bin", fa, SparsekSettings(top_k=8))
    assert sparse.final != stock.final


@pytest.fixture(scope="module")
def weights(swa_model: Path) -> numpy_gemma2.Gemma2Weights:
    return numpy_gemma2.load(swa_model)


@pytest.fixture(scope="module")
def tokens(swa_model: Path) -> list[int]:
    return reference_check.text_tokens(swa_model, N_TOKENS)


@pytest.fixture(scope="module", params=[False, True], ids=["softmax", "flash-attn"])
def dense(request: pytest.FixtureRequest, swa_model: Path, tokens: list[int],
          weights: numpy_gemma2.Gemma2Weights) -> Dense:
    ggml = reference_check.ggml_logits(swa_model, tokens, request.param)
    return Dense(request.param, ggml, numpy_llama.kl(numpy_gemma2.logits(weights, tokens), ggml))


def test_dense_swa_matches_the_reference(dense: Dense) -> None:
    print(f"\ndense fa={dense.flash_attn}: KL(ref||ggml) = {dense.kl_floor:.2e}")
    assert dense.kl_floor < 1e-4


def _check(weights: numpy_gemma2.Gemma2Weights, model: Path, tokens: list[int], dense: Dense, rule: dict,
           ggml_settings: SparsekSettings) -> tuple[bool, str]:
    v = reference_check.check(functools.partial(numpy_gemma2.logits, weights), rule, model, tokens, dense,
                              ggml_settings, min_agree=0.9, slack=1e-5)
    return v.ok, v.report


CASES = [
    SparsekSettings(top_k=8),
    SparsekSettings(top_k=16, mode="group"),
    SparsekSettings(top_k=8, mode="token"),
    SparsekSettings(top_k=8, window=4, sinks=2),   # sinks lie outside the sliding window for most rows: never kept
    SparsekSettings(top_k=8, stride=16),
]


def _rule(settings: SparsekSettings) -> dict:
    r = settings.resolved()
    return {"top_k": r.top_k, "mode": r.mode, "window": r.window, "stride": r.stride, "sinks": r.sinks}


@pytest.mark.parametrize("settings", CASES, ids=lambda s: "-".join(f"{k}{v}" for k, v in s.given().items()))
def test_sparsek_on_swa_matches_the_reference(weights: numpy_gemma2.Gemma2Weights, swa_model: Path,
                                              tokens: list[int], dense: Dense, settings: SparsekSettings) -> None:
    ok, report = _check(weights, swa_model, tokens, dense, _rule(settings), settings)
    print("\n" + report)
    assert ok, report


@pytest.mark.parametrize("wrong", [{"lowest": True}, {"select_past_window": True}], ids=["lowest", "past-window"])
def test_the_swa_check_rejects_wrong_rules(weights: numpy_gemma2.Gemma2Weights, swa_model: Path,
                                           tokens: list[int], dense: Dense, wrong: dict) -> None:
    """Keeping the K lowest, or choosing the K among cells the sliding window forbids, must fail the check."""
    settings = SparsekSettings(top_k=16)
    ok, report = _check(weights, swa_model, tokens, dense, {**_rule(settings), **wrong}, settings)
    print("\n" + report)
    assert not ok, report


def test_score_copy_on_the_iswa_cache(swa_model: Path, tokens: list[int], open_llm: Callable[..., Any]) -> None:
    """Both caches of an iSWA model keep a copy: f16 selects exactly as K (flash attention, where the op applies
    the soft-cap in both cases); q4_0 runs and stays close."""
    from pysparsek.sparsek import llm

    out = {}
    for score_type in ("none", "f16", "q4_0"):
        sparsek = SparsekSettings(top_k=16, mode="group", window=4, sinks=2, score_type=score_type)
        m = open_llm(swa_model, sparsek, n_ctx=512, n_batch=512, n_ubatch=512, n_threads=2, logits_all=True,
                     flash_attn=True)
        assert llm.score_size(m) > 0 or score_type == "none"
        out[score_type] = loaders.eval_logits(m, tokens)
    assert np.array_equal(out["none"], out["f16"])
    assert not np.array_equal(out["none"], out["q4_0"])
    assert numpy_llama.kl(out["none"], out["q4_0"]) < 0.05
