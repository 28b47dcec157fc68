"""Sparse-K scores from a copy of K (score_type), the decode-only policy (max_ubatch) and the decode regime.

The f16 copy holds exactly what K holds, so choosing from it must give bit-identical logits to choosing from K:
that checks the copy is written at the right cells by every graph and kept right by the memory operations
(sequence removal and refill, state save/restore, K-shift). q4_0/q8_0 selection is checked against an independent
NumPy rule in test_reference.py.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import loaders
import numpy as np
import pytest

from pysparsek.data import corpus
from pysparsek.llamacpp.build import Build
from pysparsek.measure import decode_regime as dr
from pysparsek.sparsek import llm, meta
from pysparsek.sparsek.settings import SparsekSettings

import numpy_llama

pytestmark = [pytest.mark.build, pytest.mark.slow]

N_CTX = 512


@pytest.fixture(scope="module")
def tokens(model: Path) -> list[int]:
    return loaders.text_tokens(model, 400, n_chars=8000)


def _load(open_llm: Callable[..., Any], model: Path, score_type: str, flash_attn: bool = True, mode: str = "group",
          max_ubatch: int | None = None, sparq_r: int | None = None, **kw: Any) -> Any:
    sparsek = SparsekSettings(top_k=16, mode=mode, score_type=score_type, max_ubatch=max_ubatch, sparq_r=sparq_r)
    return open_llm(model, sparsek, n_ctx=N_CTX, n_batch=N_CTX, n_ubatch=N_CTX, n_threads=2, logits_all=True,
                    flash_attn=flash_attn, **kw)


_eval_logits = loaders.eval_logits


@pytest.mark.parametrize("flash_attn", [False, True], ids=["softmax", "flash-attn"])
@pytest.mark.parametrize("mode", ["head", "group"])
def test_f16_copy_selects_exactly_as_k(model: Path, tokens: list[int], flash_attn: bool, mode: str,
                                       open_llm: Callable[..., Any]) -> None:
    out = {}
    for score_type in ("none", "f16"):
        m = _load(open_llm, model, score_type, flash_attn, mode=mode)
        prompt = _eval_logits(m, tokens[:300])                       # batch rows, all sparse (K = 16)
        decoded = np.concatenate([_eval_logits(m, [t]) for t in tokens[300:316]])
        out[score_type] = (prompt, decoded)
        assert llm.get_sparsek(m).score_type == score_type
    assert np.array_equal(out["none"][0], out["f16"][0])
    assert np.array_equal(out["none"][1], out["f16"][1])


def test_q4_0_copy_changes_the_selection_a_little(model: Path, tokens: list[int], open_llm: Callable[..., Any]) -> None:
    """Not a no-op: q4_0 scores choose other cells than exact ones, yet the output moves far less from exact
    scoring's than exact scoring's moves from dense."""
    res = {}
    for score_type in ("none", "q4_0"):
        m = _load(open_llm, model, score_type)
        res[score_type] = _eval_logits(m, tokens[:300])
    d = open_llm(model, n_ctx=N_CTX, n_batch=N_CTX, n_ubatch=N_CTX, n_threads=2, logits_all=True, flash_attn=True)
    dense = _eval_logits(d, tokens[:300])

    assert not np.array_equal(res["none"], res["q4_0"])
    kl_q4 = numpy_llama.kl(res["none"], res["q4_0"])
    kl_sparse = numpy_llama.kl(dense, res["none"])
    print(f"\nKL(exact || q4_0 scores) = {kl_q4:.4f}, KL(dense || exact K=16) = {kl_sparse:.4f}")
    assert kl_q4 < 0.5 * kl_sparse


@pytest.mark.parametrize("score_type", ["f16", "q4_0"])
def test_removed_cells_are_rewritten_in_the_copy(model: Path, tokens: list[int], score_type: str,
                                                 open_llm: Callable[..., Any]) -> None:
    """Fill 200 tokens, add 100, remove those 100 and decode other tokens into the same cells: the result must
    equal a run that never held the removed tokens (stale copy rows would be chosen from otherwise)."""
    a = _load(open_llm, model, score_type)
    _eval_logits(a, tokens[:200])
    _eval_logits(a, tokens[200:300])
    a.n_tokens = 200  # llama-cpp-python removes cells past n_tokens (llama_memory_seq_rm) on the next eval
    got = _eval_logits(a, tokens[300:380])
    b = _load(open_llm, model, score_type)
    _eval_logits(b, tokens[:200])
    want = _eval_logits(b, tokens[300:380])
    assert np.array_equal(got, want)


def test_state_restore_derives_the_copy_from_k(model: Path, tokens: list[int], open_llm: Callable[..., Any]) -> None:
    """The saved state holds K only; a context that loads it rebuilds its f16 copy from K."""
    a = _load(open_llm, model, "f16")
    _eval_logits(a, tokens[:250])
    state = a.save_state()
    want = np.concatenate([_eval_logits(a, [t]) for t in tokens[250:270]])
    b = _load(open_llm, model, "f16")
    b.load_state(state)
    got = np.concatenate([_eval_logits(b, [t]) for t in tokens[250:270]])
    c = _load(open_llm, model, "none")
    c.load_state(state)
    from_k = np.concatenate([_eval_logits(c, [t]) for t in tokens[250:270]])
    assert np.array_equal(got, want)
    assert np.array_equal(got, from_k)


def _decode_after_a_shift(m: Any, tokens: list[int], n: int) -> np.ndarray:
    """Evaluate 300 tokens, drop positions 10-109 and shift the rest down by 100 (what context shifting does: a
    K-shift), then decode n more tokens one at a time; their logits."""
    import llama_cpp

    _eval_logits(m, tokens[:300])
    mem = llama_cpp.llama_get_memory(m.ctx)
    assert llama_cpp.llama_memory_seq_rm(mem, 0, 10, 110)
    llama_cpp.llama_memory_seq_add(mem, 0, 110, -1, -100)
    m.n_tokens = 200
    return np.concatenate([_eval_logits(m, [t]) for t in tokens[300:300 + n]])


def test_k_shift_shifts_the_copy(model: Path, tokens: list[int], open_llm: Callable[..., Any]) -> None:
    """After a position shift (what context shifting does) the copy is RoPE-shifted like K: f16 copy == K."""

    out = {st: _decode_after_a_shift(_load(open_llm, model, st), tokens, 16) for st in ("none", "f16")}
    assert np.array_equal(out["none"], out["f16"])


# logits of scoring from K in the K-shift cases below, (score type, "shifted" | "fresh") -> logits
_SHIFT_BASELINE: dict[tuple[str, str], np.ndarray] = {}


@pytest.mark.parametrize("score_type", ["q8_0", "q4_0"])
def test_k_shift_shifts_a_quantized_copy(model: Path, tokens: list[int], score_type: str,
                                         open_llm: Callable[..., Any]) -> None:
    """A quantized copy takes the K-shift through F32 and back into the copy (what context shifting does to the
    recommended q4_0 copy): it runs, and after the shift it chooses about as close to what scoring from K chooses
    as it does for the same tokens evaluated at the shifted positions without a shift (measured: q4_0 KL 0.088
    shifted against 0.066, q8_0 0.014 against 0.016). The head-major copy viewed in K's order would be a permuted
    quantized destination, which the CPU's copy to a quantized type refuses (abort)."""

    out = {}
    for st in ("none", score_type):
        if st == "none" and _SHIFT_BASELINE:
            out.update(_SHIFT_BASELINE)  # scoring from K: the same for both copies' cases, computed once
            continue
        out[st, "shifted"] = _decode_after_a_shift(_load(open_llm, model, st), tokens, 32)
        f = _load(open_llm, model, st)
        _eval_logits(f, tokens[:10] + tokens[110:300])           # the same cells at those positions, no shift
        out[st, "fresh"] = np.concatenate([_eval_logits(f, [t]) for t in tokens[300:332]])
        if st == "none":
            _SHIFT_BASELINE.update({key: value for key, value in out.items() if key[0] == "none"})
    kl = {how: numpy_llama.kl(out["none", how], out[score_type, how]) for how in ("shifted", "fresh")}
    print(f"\nKL(K || {score_type} copy): {kl}")
    assert not np.array_equal(out["none", "shifted"], out[score_type, "shifted"])
    assert kl["shifted"] < 2*kl["fresh"] + 0.01, kl


def test_score_type_api(model: Path, open_llm: Callable[..., Any]) -> None:
    import gguf

    m = open_llm(model, n_ctx=N_CTX, n_threads=2)
    assert llm.get_sparsek(m).score_type == "none" and llm.score_size(m) == 0
    llm.set_sparsek(m, SparsekSettings(score_type="q4_0"))
    reader = gguf.GGUFReader(model)
    n_layer = int(reader.get_field("llama.block_count").contents())
    n_head_kv = int(reader.get_field("llama.attention.head_count_kv").contents())
    n_embd = int(reader.get_field("llama.embedding_length").contents())
    n_head = int(reader.get_field("llama.attention.head_count").contents())
    n_embd_k_gqa = n_embd // n_head * n_head_kv
    # one q4_0 row per cell and layer (gguf-py's block size and bytes per block)
    block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q4_0]
    assert llm.score_size(m) == n_layer * N_CTX * n_embd_k_gqa // block * type_size
    llm.set_sparsek(m, SparsekSettings(score_type="none"))
    assert llm.score_size(m) == 0
    with pytest.raises(ValueError, match="unknown Sparse-K score_type"):
        llm.set_sparsek(m, SparsekSettings(score_type="q2_k"))


def test_metadata_score_type_and_policy(model: Path, tmp_path: Path, open_llm: Callable[..., Any]) -> None:
    want = SparsekSettings(top_k=16, score_type="q4_0", max_ubatch=1)
    out = meta.write(model, tmp_path / "m.gguf", want)
    assert meta.read(out) == want
    m = open_llm(out, n_ctx=N_CTX, n_threads=2)
    assert llm.model_sparsek(m) == llm.get_sparsek(m) == want.resolved() and llm.score_size(m) > 0


def test_decode_only_policy(model: Path, tokens: list[int], open_llm: Callable[..., Any]) -> None:
    """max_ubatch 1: a prompt batch attends densely (identical to Sparse-K off), decoded tokens sparsely."""
    dense = open_llm(model, n_ctx=N_CTX, n_batch=N_CTX, n_ubatch=N_CTX, n_threads=2, logits_all=True,
                     flash_attn=True)
    want_prompt = _eval_logits(dense, tokens[:300])
    dense_decoded = np.concatenate([_eval_logits(dense, [t]) for t in tokens[300:316]])
    m = _load(open_llm, model, "none", max_ubatch=1)
    assert np.array_equal(_eval_logits(m, tokens[:300]), want_prompt)
    decoded = np.concatenate([_eval_logits(m, [t]) for t in tokens[300:316]])
    assert not np.array_equal(decoded, dense_decoded)
    # the same as switching Sparse-K on by hand after a dense prompt
    by_hand = open_llm(model, n_ctx=N_CTX, n_batch=N_CTX, n_ubatch=N_CTX, n_threads=2, logits_all=True,
                       flash_attn=True)
    _eval_logits(by_hand, tokens[:300])
    llm.set_sparsek(by_hand, SparsekSettings(top_k=16, mode="group"))
    assert np.array_equal(np.concatenate([_eval_logits(by_hand, [t]) for t in tokens[300:316]]), decoded)


def test_decode_regime_of_a_dense_setting_is_plain_decoding(model: Path, tmp_path: Path, open_llm: Callable[...,
                                                            Any]) -> None:
    """K >= every row's cells is dense: KL exactly 0; and dense equals an independent plain decoding loop."""
    text = tmp_path / "t.txt"
    text.write_text(corpus.default_text().read_text(encoding="utf-8")[:20000], encoding="utf-8")
    res = dr.measure(model, text, [dr.Setting(SparsekSettings(top_k=4096, mode="group")),
                                      dr.Setting(SparsekSettings(top_k=16, mode="group"))], prompt=128, decode=16,
                     chunks=2)
    dense, big_k, small_k = res
    assert big_k.kl_mean == 0.0 and big_k.top1_agreement_pct == 100.0 and big_k.ppl == dense.ppl
    assert small_k.kl_mean > 0.0
    # plain decoding: a fresh context, prompt then one token per call, log-probabilities by hand
    m = open_llm(model, n_ctx=256, n_batch=512, n_ubatch=512, n_threads=2, flash_attn=True, logits_all=True)
    toks = m.tokenize(text.read_text(encoding="utf-8").encode(), add_bos=False)
    nll = []
    for c in range(2):
        chunk = toks[c * 145:(c + 1) * 145]
        m.reset()
        m.eval(chunk[:128])
        for i, t in enumerate(chunk[128:144]):
            m.eval([t])
            lp = dr.log_softmax(np.array(m.scores[m.n_tokens - 1]))
            nll.append(-lp[chunk[128 + i + 1]])
    assert float(np.exp(np.mean(nll))) == pytest.approx(dense.ppl, rel=1e-12)


@pytest.mark.parametrize(("flags", "message"), [
    (["--sparsek-score-type", "q3"], "--sparsek-score-type must be none, f16, q8_0 or q4_0"),
    (["--sparsek-max-ubatch", "-1"], "--sparsek-max-ubatch must be >= 0"),
])
def test_bad_flags_are_clear_errors(patched_build: Build, model: Path, short_text: Path, flags: list[str],
                                    message: str) -> None:
    proc = subprocess.run([str(patched_build.tool("llama-perplexity")), "-m", str(model), "-f", str(short_text),
                           "-c", "256", "--chunks", "1", *flags], capture_output=True, text=True, check=False)
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr


def test_llama_bench_sweeps_score_type_and_policy(patched_build: Build, model: Path) -> None:
    import json

    proc = subprocess.run([str(patched_build.tool("llama-bench")), "-m", str(model), "-p", "32", "-n", "0",
                           "-r", "1", "-t", "2", "-sk", "16", "-skst", "none,q4_0", "-skmu", "0,1", "-o", "json"],
                          capture_output=True, text=True, check=True)
    records = json.loads(proc.stdout)
    assert sorted((r["sparsek_score_type"], r["sparsek_max_ubatch"]) for r in records) == [
        ("none", 0), ("none", 1), ("q4_0", 0), ("q4_0", 1)]
    bad = subprocess.run([str(patched_build.tool("llama-bench")), "-m", str(model), "-skst", "q3"],
                         capture_output=True, text=True, check=False)
    assert bad.returncode != 0


def test_copy_next_to_a_quantized_kv_cache(model: Path, tokens: list[int], open_llm: Callable[..., Any]) -> None:
    """A q4_0 copy next to a q8_0 K/V cache (which stores Hadamard-rotated keys; the copy stores the same keys):
    runs, and chooses close to what scoring from the q8_0 K chooses."""
    import llama_cpp

    out = {}
    for score_type in ("none", "q4_0"):
        m = _load(open_llm, model, score_type, type_k=llama_cpp.GGML_TYPE_Q8_0, type_v=llama_cpp.GGML_TYPE_Q8_0)
        out[score_type] = _eval_logits(m, tokens[:300])
    kl = numpy_llama.kl(out["none"], out["q4_0"])
    assert not np.array_equal(out["none"], out["q4_0"])
    assert kl < 0.05, kl


def _decode_seq(lib: Any, ctx: Any, tokens: list[int], pos0: int, seq: int, n_vocab: int) -> np.ndarray:
    """Decode tokens into one sequence of a low-level context; the logits of the last one."""
    batch = lib.llama_batch_init(len(tokens), 0, 1)
    try:
        batch.n_tokens = len(tokens)
        for i, t in enumerate(tokens):
            batch.token[i] = t
            batch.pos[i] = pos0 + i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq
            batch.logits[i] = i == len(tokens) - 1
        assert lib.llama_decode(ctx, batch) == 0
        return np.ctypeslib.as_array(lib.llama_get_logits_ith(ctx, len(tokens) - 1), shape=(n_vocab,)).copy()
    finally:
        lib.llama_batch_free(batch)


@pytest.mark.parametrize("score_type", ["f16", "q4_0"])
def test_sequence_copy_between_streams_copies_the_copy(model: Path, tokens: list[int], score_type: str,
                                                       open_llm: Callable[..., Any]) -> None:
    """Two sequences in separate streams (kv_unified off): llama_memory_seq_cp copies stream 0's cells to stream 1,
    the score copy included (stored head-major, so not one block of memory): sequence 1 then decodes exactly as
    sequence 0 does, token for token. A copy left stale or half-copied chooses other cells in sequence 1."""
    import llama_cpp as lib

    m = open_llm(model, n_ctx=N_CTX, n_threads=2)  # the model (and the patched library) for a context of our own
    params = lib.llama_context_default_params()
    params.n_ctx = 2*N_CTX
    params.n_batch = N_CTX
    params.n_ubatch = N_CTX
    params.n_seq_max = 2
    params.kv_unified = False
    params.flash_attn_type = lib.LLAMA_FLASH_ATTN_TYPE_ENABLED
    params.n_threads = 2
    params.n_threads_batch = 2
    ctx = lib.llama_init_from_model(m.model, params)
    assert ctx
    try:
        shim = type("Ctx", (), {"ctx": ctx})()
        llm.set_sparsek(shim, SparsekSettings(top_k=16, mode="group", score_type=score_type))
        n_vocab = lib.llama_vocab_n_tokens(lib.llama_model_get_vocab(m.model))
        _decode_seq(lib, ctx, tokens[:200], 0, 0, n_vocab)
        mem = lib.llama_get_memory(ctx)
        lib.llama_memory_seq_cp(mem, 0, 1, -1, -1)
        for i, t in enumerate(tokens[200:216]):
            a = _decode_seq(lib, ctx, [t], 200 + i, 0, n_vocab)
            b = _decode_seq(lib, ctx, [t], 200 + i, 1, n_vocab)
            assert np.array_equal(a, b), f"sequence 1 differs from sequence 0 at token {i}"
    finally:
        lib.llama_free(ctx)


# -- SparQ (sparq_r): the channel-major F16 copy of K -------------------------------------------------------------
# With r >= the head size (64) SparQ scores every component of the copy, which holds exactly what K holds; a batch
# of several tokens multiplies the copy (transposed back) by q in one product as exact scoring multiplies K, so in
# head mode (no temperature correction) a batch selects as K does: any cell written to the wrong place, left stale
# or shifted wrongly changes the selection. (A decoded token sums the r gathered rows in F32 while exact scoring
# rounds q to F16 for its F16 product: near-ties may go either way there.) Smaller r is checked against the NumPy
# rule in test_reference.py.
ALL_COMPONENTS = 64


def _decoded(m: Any, tokens: list[int]) -> np.ndarray:
    return np.concatenate([_eval_logits(m, [t]) for t in tokens])


@pytest.mark.parametrize("flash_attn", [False, True], ids=["softmax", "flash-attn"])
def test_sparq_with_every_component_selects_exactly_as_k(model: Path, tokens: list[int], flash_attn: bool,
                                                         open_llm: Callable[..., Any]) -> None:
    out = {}
    for sparq_r in (0, ALL_COMPONENTS, 8):
        m = _load(open_llm, model, "none", flash_attn, mode="head", sparq_r=sparq_r)
        out[sparq_r] = (_eval_logits(m, tokens[:300]), _decoded(m, tokens[300:332]))
        assert llm.get_sparsek(m).sparq_r == sparq_r
    assert np.array_equal(out[0][0], out[ALL_COMPONENTS][0])
    # negative control: 8 of 64 components choose other cells
    assert not np.array_equal(out[0][0], out[8][0])
    # decoded tokens: every component scores as K up to rounding, far closer than 8 components
    kl_all, kl_8 = numpy_llama.kl(out[0][1], out[ALL_COMPONENTS][1]), numpy_llama.kl(out[0][1], out[8][1])
    print(f"\nKL(exact || sparq r=64) = {kl_all:.2e}, KL(exact || sparq r=8) = {kl_8:.2e}")
    assert kl_all < 0.1 * kl_8


@pytest.mark.parametrize("sparq_r", [ALL_COMPONENTS, 16])
def test_sparq_removed_cells_are_rewritten_in_the_copy(model: Path, tokens: list[int], sparq_r: int,
                                                       open_llm: Callable[..., Any]) -> None:
    a = _load(open_llm, model, "none", sparq_r=sparq_r)
    _eval_logits(a, tokens[:200])
    _eval_logits(a, tokens[200:300])
    a.n_tokens = 200  # llama_memory_seq_rm of the last 100 cells on the next eval
    got = _eval_logits(a, tokens[300:380])
    b = _load(open_llm, model, "none", sparq_r=sparq_r)
    _eval_logits(b, tokens[:200])
    want = _eval_logits(b, tokens[300:380])
    assert np.array_equal(got, want)


def test_sparq_state_restore_derives_the_copy_from_k(model: Path, tokens: list[int],
                                                      open_llm: Callable[..., Any]) -> None:
    a = _load(open_llm, model, "none", sparq_r=16)
    _eval_logits(a, tokens[:250])
    state = a.save_state()
    want = _decoded(a, tokens[250:270])
    b = _load(open_llm, model, "none", sparq_r=16)
    b.load_state(state)
    assert np.array_equal(_decoded(b, tokens[250:270]), want)
    # SparQ switched on after the restore: the copy is filled from K then, the same again
    c = _load(open_llm, model, "none")
    c.load_state(state)
    llm.set_sparsek(c, SparsekSettings(sparq_r=16))
    assert np.array_equal(_decoded(c, tokens[250:270]), want)


def test_sparq_k_shift_shifts_the_copy(model: Path, tokens: list[int], open_llm: Callable[..., Any]) -> None:
    import llama_cpp

    out = {}
    for sparq_r in (0, ALL_COMPONENTS):
        m = _load(open_llm, model, "none", mode="head", sparq_r=sparq_r)
        _eval_logits(m, tokens[:300])
        mem = llama_cpp.llama_get_memory(m.ctx)
        assert llama_cpp.llama_memory_seq_rm(mem, 0, 10, 110)
        llama_cpp.llama_memory_seq_add(mem, 0, 110, -1, -100)
        m.n_tokens = 200
        out[sparq_r] = _eval_logits(m, tokens[300:340])  # one batch: scored as exact scoring scores (see above)
    assert np.array_equal(out[0], out[ALL_COMPONENTS])


def test_sparq_api_and_size(model: Path, open_llm: Callable[..., Any]) -> None:
    import gguf

    m = open_llm(model, n_ctx=N_CTX, n_threads=2)
    assert llm.get_sparsek(m).sparq_r == 0 and llm.score_size(m) == 0
    llm.set_sparsek(m, SparsekSettings(sparq_r=16))
    reader = gguf.GGUFReader(model)
    n_layer = int(reader.get_field("llama.block_count").contents())
    n_head_kv = int(reader.get_field("llama.attention.head_count_kv").contents())
    n_embd = int(reader.get_field("llama.embedding_length").contents())
    n_head = int(reader.get_field("llama.attention.head_count").contents())
    f16 = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.F16][1]
    # one F16 value per cell, channel and layer, whatever r is
    assert llm.score_size(m) == n_layer * N_CTX * (n_embd // n_head * n_head_kv) * f16
    # SparQ's copy replaces a score type's; the score type stays set and comes back when SparQ is off
    llm.set_sparsek(m, SparsekSettings(score_type="q4_0"))
    assert llm.get_sparsek(m).score_type == "q4_0"
    assert llm.score_size(m) == n_layer * N_CTX * (n_embd // n_head * n_head_kv) * f16
    llm.set_sparsek(m, SparsekSettings(sparq_r=0))
    block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q4_0]
    assert llm.score_size(m) == n_layer * N_CTX * (n_embd // n_head * n_head_kv) // block * type_size


def test_sparq_shared_api_metadata_and_refusals(model: Path, tmp_path: Path, open_llm: Callable[..., Any]) -> None:
    """sparq_shared round-trips through the C API and GGUF; the library refuses other values than 0 and 1 (the
    setter returns -1 and keeps the old value, the loader names the key)."""
    want = SparsekSettings(top_k=16, mode="group", sparq_r=8, sparq_shared=1)
    out = meta.write(model, tmp_path / "m.gguf", want)
    m = open_llm(out, n_ctx=N_CTX, n_threads=2)
    assert llm.model_sparsek(m).sparq_shared == llm.get_sparsek(m).sparq_shared == 1
    assert llm.api().llama_set_sparsek_sparq_shared(m.ctx, 2) == -1
    assert llm.get_sparsek(m).sparq_shared == 1
    llm.set_sparsek(m, SparsekSettings(sparq_shared=0))
    assert llm.get_sparsek(m).sparq_shared == 0


def test_metadata_sparq_r(model: Path, tmp_path: Path, open_llm: Callable[..., Any]) -> None:
    want = SparsekSettings(top_k=16, mode="group", sparq_r=16, max_ubatch=1)
    out = meta.write(model, tmp_path / "m.gguf", want)
    assert meta.read(out) == want
    m = open_llm(out, n_ctx=N_CTX, n_threads=2)
    assert llm.model_sparsek(m) == llm.get_sparsek(m) == want.resolved() and llm.score_size(m) > 0
