"""A tiny random-weight Llama GGUF with a byte-level SentencePiece vocabulary, written with the gguf package.

Small enough (a few hundred KB) to write hundreds of variants in seconds, real enough for llama.cpp to load it,
tokenize any text (byte fallback), build its graph and decode. Its head size is a parameter, so a head size that is
not a multiple of a quantized type's block (32) can be written too. Used by the metadata fuzz
(`pysparsek.measure.metafuzz`); the weights are random, so what it generates means nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

ARCH = "llama"


@dataclass(frozen=True)
class TinyShape:
    n_layer: int = 2
    n_head: int = 2
    n_head_kv: int = 1      # GQA: `group` mode has a group of 2 query heads
    head_dim: int = 32      # a multiple of 32 takes every score type; 48 or 16 do not
    n_ff: int = 64
    n_ctx_train: int = 256

    @property
    def n_embd(self) -> int:
        return self.n_head * self.head_dim


def _vocab() -> tuple[list[str], list[float], list[int]]:
    """<unk>, <s>, </s> and the 256 byte tokens: SentencePiece's byte fallback covers any text."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL] + [gguf.TokenType.BYTE] * 256
    return tokens, [0.0] * len(tokens), [int(t) for t in types]


def writer(dst: Path, shape: TinyShape = TinyShape()) -> gguf.GGUFWriter:
    """A GGUFWriter holding the model's metadata (no Sparse-K keys yet); add more keys, then `finish` it."""
    s = shape
    w = gguf.GGUFWriter(dst, arch=ARCH)
    w.add_name("pysparsek tiny llama (random weights)")
    w.add_context_length(s.n_ctx_train)
    w.add_embedding_length(s.n_embd)
    w.add_block_count(s.n_layer)
    w.add_feed_forward_length(s.n_ff)
    w.add_head_count(s.n_head)
    w.add_head_count_kv(s.n_head_kv)
    w.add_rope_dimension_count(s.head_dim)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    tokens, scores, types = _vocab()
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    return w


def tensors(shape: TinyShape = TinyShape(), seed: int = 0) -> Mapping[str, np.ndarray]:
    s = shape
    rng = np.random.default_rng(seed)
    n_vocab = len(_vocab()[0])

    def normal(rows: int, cols: int) -> np.ndarray:
        return rng.normal(0.0, 1.0 / np.sqrt(cols), (rows, cols)).astype(np.float32)

    out: dict[str, np.ndarray] = {"token_embd.weight": normal(n_vocab, s.n_embd)}
    for il in range(s.n_layer):
        p = f"blk.{il}."
        out[p + "attn_norm.weight"] = np.ones(s.n_embd, dtype=np.float32)
        out[p + "attn_q.weight"] = normal(s.n_head * s.head_dim, s.n_embd)
        out[p + "attn_k.weight"] = normal(s.n_head_kv * s.head_dim, s.n_embd)
        out[p + "attn_v.weight"] = normal(s.n_head_kv * s.head_dim, s.n_embd)
        out[p + "attn_output.weight"] = normal(s.n_embd, s.n_head * s.head_dim)
        out[p + "ffn_norm.weight"] = np.ones(s.n_embd, dtype=np.float32)
        out[p + "ffn_gate.weight"] = normal(s.n_ff, s.n_embd)
        out[p + "ffn_up.weight"] = normal(s.n_ff, s.n_embd)
        out[p + "ffn_down.weight"] = normal(s.n_embd, s.n_ff)
    out["output_norm.weight"] = np.ones(s.n_embd, dtype=np.float32)
    out["output.weight"] = normal(n_vocab, s.n_embd)
    return out


def finish(w: gguf.GGUFWriter, weights: Mapping[str, np.ndarray]) -> None:
    for name, value in weights.items():
        w.add_tensor(name, value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write(dst: Path, shape: TinyShape = TinyShape(), seed: int = 0) -> Path:
    """The model alone, without Sparse-K metadata."""
    finish(writer(dst, shape), tensors(shape, seed))
    return dst
