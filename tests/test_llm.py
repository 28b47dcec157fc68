"""llama-cpp-python on the patched library, with Sparse-K set through the new C API."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import loaders
import numpy as np
import pytest

from pysparsek.llamacpp import build as builds
from pysparsek.sparsek import llm
from pysparsek.sparsek.settings import SparsekSettings, to_c

pytestmark = pytest.mark.build

N_CTX = 512


@pytest.fixture(scope="module")
def prompt_tokens(model: Path, patched_build: builds.Build) -> list[int]:
    return loaders.text_tokens(model, 300, n_chars=3000, add_bos=True)


def _logits(model: Path, tokens: list[int], sparsek: SparsekSettings | None = None) -> np.ndarray:
    return loaders.logits(model, tokens, sparsek, n_ctx=N_CTX, n_threads=2)


@pytest.fixture(scope="module")
def dense(model: Path, prompt_tokens: list[int]) -> np.ndarray:
    """The prompt's logits without Sparse-K, once for the tests that compare against them."""
    return _logits(model, prompt_tokens)


def _greedy(model: Path, tokens: list[int], n: int, sparsek: SparsekSettings | None = None) -> list[int]:
    out = []
    with loaders.opened(model, sparsek, n_ctx=N_CTX, n_threads=2) as m:
        for tok in m.generate(tokens, top_k=1, temp=0.0):
            out.append(tok)
            if len(out) == n:
                break
    return out


def test_llama_cpp_runs_on_the_patched_library(patched_build: builds.Build, model: Path) -> None:
    llm.bind()
    assert llm.loaded_library_path().resolve() == (patched_build.lib_dir / "libllama.so").resolve()
    assert llm.has_sparsek_api()


def test_settings_round_trip_and_validation(model: Path, open_llm: Callable[..., Any]) -> None:
    m = open_llm(model, n_ctx=N_CTX, n_threads=2)
    assert llm.get_sparsek(m) == SparsekSettings.off()  # SmolLM2 has no Sparse-K metadata: off
    # every field given (a field added later is compared too): what comes back is exactly what was set
    want = SparsekSettings.off().replace(top_k=32, window=8, stride=64, sinks=4, mode="group", score_type="q4_0",
                                         max_ubatch=1)
    llm.set_sparsek(m, want)
    assert llm.get_sparsek(m) == want
    llm.set_sparsek(m, SparsekSettings(window=16))  # unset fields keep their values
    assert llm.get_sparsek(m) == want.replace(window=16)
    # the library's own check, past the Python one: llama_set_sparsek returns -1 and keeps the old settings
    bad = to_c(want)
    bad.top_k = -1
    assert llm.api().llama_set_sparsek(m.ctx, bad) == -1
    bad = to_c(want)
    bad.mode = 7
    assert llm.api().llama_set_sparsek(m.ctx, bad) == -1
    assert llm.get_sparsek(m) == want.replace(window=16)  # rejected settings leave the old ones


def test_topk_at_least_context_gives_identical_logits(model: Path, prompt_tokens: list[int], dense: np.ndarray) -> None:
    full = _logits(model, prompt_tokens, sparsek=SparsekSettings(top_k=N_CTX, mode="token"))
    assert np.array_equal(dense, full)


def test_small_topk_changes_logits_and_generation(model: Path, prompt_tokens: list[int], dense: np.ndarray) -> None:
    sparse = _logits(model, prompt_tokens, sparsek=SparsekSettings(top_k=4))
    # rows with <= 4 visible cells are unchanged; later ones must differ
    assert np.array_equal(dense[:4], sparse[:4])
    assert not np.allclose(dense[50:], sparse[50:])
    assert _greedy(model, prompt_tokens, 24, sparsek=SparsekSettings(top_k=2)) != _greedy(model, prompt_tokens, 24)


def test_changing_settings_takes_effect_on_the_next_decode(model: Path, prompt_tokens: list[int],
                                                           open_llm: Callable[..., Any]) -> None:
    """A reused graph must not keep the old Sparse-K setting."""
    m = open_llm(model, n_ctx=N_CTX, n_threads=2, logits_all=True)
    m.eval(prompt_tokens)
    dense = np.array(m.scores[: len(prompt_tokens)], copy=True)
    m.reset()
    llm.set_sparsek(m, SparsekSettings(top_k=4))
    m.eval(prompt_tokens)
    sparse = np.array(m.scores[: len(prompt_tokens)], copy=True)
    m.reset()
    llm.set_sparsek(m, SparsekSettings(top_k=0))
    m.eval(prompt_tokens)
    again = np.array(m.scores[: len(prompt_tokens)], copy=True)
    assert not np.allclose(dense[50:], sparse[50:])
    assert np.array_equal(dense, again)


def test_load_completes_a_topk_with_the_recommended_settings(model: Path, open_llm: Callable[..., Any]) -> None:
    from pysparsek.sparsek.recommended import RECOMMENDED

    m = open_llm(model, SparsekSettings(top_k=64), exact=False, n_ctx=256, n_threads=2)
    assert llm.get_sparsek(m) == RECOMMENDED.replace(top_k=64).resolved()
    m = open_llm(model, SparsekSettings(top_k=64, mode="head"), exact=False, n_ctx=256, n_threads=2)
    assert llm.get_sparsek(m) == RECOMMENDED.replace(top_k=64, mode="head").resolved()
    m = open_llm(model, SparsekSettings(top_k=64), exact=True, n_ctx=256, n_threads=2)
    assert llm.get_sparsek(m) == SparsekSettings(top_k=64).resolved()


def test_load_checks_the_metadata_first(tmp_path: Path, patched_build: builds.Build,
                                        open_llm: Callable[..., Any]) -> None:
    """A bad Sparse-K key is a MetaError naming it (not llama-cpp-python's bare "Failed to load model"); a key
    under the prefix that is not a setting is ignored with a warning."""
    import gguf

    from pysparsek.measure import metafuzz
    from pysparsek.sparsek import meta

    T = gguf.GGUFValueType
    bad = metafuzz.write(metafuzz.Case(-1, 32, (metafuzz.Entry(metafuzz.PREFIX + "top_k", T.INT32, 8),)),
                         tmp_path / "bad.gguf")
    with pytest.raises(meta.MetaError, match="top_k has type INT32"):
        llm.load(bad, n_ctx=64)
    odd = metafuzz.write(metafuzz.Case(-1, 32, (metafuzz.Entry(metafuzz.PREFIX + "topk", T.UINT32, 8),)),
                         tmp_path / "odd.gguf")
    with pytest.warns(UserWarning, match=r"ignoring llama\.attention\.sparsek\.topk: not Sparse-K settings"):
        open_llm(odd, n_ctx=64, n_threads=1)
