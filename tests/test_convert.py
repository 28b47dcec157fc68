"""`convert` offline: a random Llama checkpoint made here with transformers, converted with the pinned
convert_hf_to_gguf.py, loaded by the patched llama.cpp and checked against transformers' own logits; then the
Sparse-K metadata written by convert takes effect on load."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import loaders
import numpy as np
import pytest

from pysparsek.data import convert, corpus
from pysparsek.sparsek import llm, meta
from pysparsek.sparsek.settings import SparsekSettings

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
spm = pytest.importorskip("sentencepiece")

pytestmark = [pytest.mark.build, pytest.mark.slow]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hf")
    text = root / "train.txt"
    text.write_text(corpus.default_text().read_text(encoding="utf-8")[:200_000], encoding="utf-8")
    spm.SentencePieceTrainer.train(input=str(text), model_prefix=str(root / "tokenizer"), vocab_size=512,
                                   model_type="bpe", byte_fallback=True, bos_id=1, eos_id=2, unk_id=0,
                                   minloglevel=2)
    ckpt = root / "tiny-llama"
    tok = transformers.LlamaTokenizer(vocab_file=str(root / "tokenizer.model"), legacy=False)
    tok.save_pretrained(ckpt)
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                                      rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=False,
                                      bos_token_id=1, eos_token_id=2)
    model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():  # larger than the default init so attention is far from uniform
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(8.0)
            layer.self_attn.k_proj.weight.mul_(8.0)
    model.save_pretrained(ckpt, safe_serialization=True)
    return ckpt


@pytest.fixture(scope="module")
def tokens() -> list[int]:
    rng = np.random.default_rng(1)
    return [1, *rng.integers(3, 512, size=95).tolist()]


def _hf_logits(ckpt: Path, tokens: list[int]) -> np.ndarray:
    model = transformers.LlamaForCausalLM.from_pretrained(ckpt, dtype=torch.float32, attn_implementation="eager")
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0].numpy()


def _gguf_logits(path: Path, tokens: list[int]) -> tuple[np.ndarray, SparsekSettings]:
    with loaders.opened(path, n_ctx=256, n_threads=2, logits_all=True) as m:
        return loaders.eval_logits(m, tokens), llm.get_sparsek(m)


def test_converted_model_matches_transformers(checkpoint: Path, tokens: list[int], tmp_path: Path) -> None:
    gguf_path = convert.convert(str(checkpoint), tmp_path / "tiny-f32.gguf", outtype="f32")
    ours, settings = _gguf_logits(gguf_path, tokens)
    ref = _hf_logits(checkpoint, tokens)
    assert settings.top_k == 0
    assert ours.shape == ref.shape
    err = np.abs(ours - ref).max() / np.abs(ref).max()
    print(f"\nmax |llama.cpp - transformers| / max |logit| = {err:.2e}")
    assert err < 1e-2  # the F16 KV cache is the main difference
    assert np.mean(ours.argmax(-1) == ref.argmax(-1)) > 0.95


def test_sparsek_metadata_from_convert_takes_effect(checkpoint: Path, tokens: list[int], tmp_path: Path) -> None:
    dense_path = convert.convert(str(checkpoint), tmp_path / "tiny.gguf", outtype="f16")
    sparse_path = convert.convert(str(checkpoint), tmp_path / "tiny-sk.gguf", outtype="f16",
                                  sparsek=SparsekSettings(top_k=4, mode="group"))
    assert meta.read(sparse_path) == SparsekSettings(top_k=4, mode="group")
    dense, _ = _gguf_logits(dense_path, tokens)
    sparse, settings = _gguf_logits(sparse_path, tokens)
    assert settings == SparsekSettings(top_k=4, mode="group").resolved()
    assert np.array_equal(dense[:4], sparse[:4])  # <= 4 visible cells: unchanged
    assert not np.allclose(dense[8:], sparse[8:], atol=1e-3)


def test_quantized_conversion_runs(checkpoint: Path, tokens: list[int], tmp_path: Path) -> None:
    q = convert.convert(str(checkpoint), tmp_path / "tiny-q8.gguf", outtype="f16", quant="Q8_0")
    ours, _ = _gguf_logits(q, tokens)
    ref = _hf_logits(checkpoint, tokens)
    assert np.mean(ours.argmax(-1) == ref.argmax(-1)) > 0.8


def test_hub_id_without_network_is_a_clear_error(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "pysparsek", "convert", "nobody-here/no-such-model-xyz",
                           "-o", str(tmp_path / "x.gguf")], capture_output=True, text=True, check=False,
                          env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2
    assert "cannot download nobody-here/no-such-model-xyz from the Hugging Face Hub" in proc.stderr
    assert proc.stderr.count("\n") == 1
