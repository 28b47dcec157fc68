"""A small random-weight Gemma-2 GGUF: a sliding-window (iSWA cache) model with attention soft-capping.

No SWA model is shipped by a package registry, so one is written here with the gguf package. Its tokenizer is
copied from another GGUF (SmolLM2), so llama-perplexity and the llama-cpp-python binding can run it on real text.
Weights are random but scaled so that attention is peaked (scores of several units), which makes the top-K
selection far from ties and the comparison against tests/numpy_gemma2.py meaningful.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

ARCH = "gemma2"


@dataclass(frozen=True)
class Shape:
    n_layer: int = 4          # gemma2: even layers use the sliding window, odd layers are global
    n_embd: int = 256
    n_head: int = 4
    n_head_kv: int = 2
    head_dim: int = 64
    n_ff: int = 512
    n_swa: int = 48
    attn_softcap: float = 20.0
    final_softcap: float = 30.0
    rope_base: float = 10000.0
    eps: float = 1e-6
    n_ctx_train: int = 4096


def _tokenizer_fields(reader: gguf.GGUFReader) -> list[tuple[str, object, gguf.GGUFValueType,
                                                             gguf.GGUFValueType | None]]:
    out = []
    for name, field in reader.fields.items():
        if not name.startswith("tokenizer."):
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        out.append((name, field.contents(), vtype, sub))
    return out


def write(dst: Path, tokenizer_from: Path, shape: Shape = Shape(), seed: int = 0) -> Path:
    src = gguf.GGUFReader(tokenizer_from)
    fields = _tokenizer_fields(src)
    n_vocab = len(next(value for name, value, _, _ in fields if name == "tokenizer.ggml.tokens"))
    rng = np.random.default_rng(seed)
    s = shape

    def normal(rows: int, cols: int, std: float) -> np.ndarray:
        return rng.normal(0.0, std, (rows, cols)).astype(np.float32)

    def norm_weight() -> np.ndarray:
        return (1.0 + rng.normal(0.0, 0.1, s.n_embd)).astype(np.float32)

    w = gguf.GGUFWriter(dst, arch=ARCH)
    w.add_name("pysparsek tiny gemma2 (random weights)")
    w.add_context_length(s.n_ctx_train)
    w.add_embedding_length(s.n_embd)
    w.add_block_count(s.n_layer)
    w.add_feed_forward_length(s.n_ff)
    w.add_head_count(s.n_head)
    w.add_head_count_kv(s.n_head_kv)
    w.add_key_length(s.head_dim)
    w.add_value_length(s.head_dim)
    w.add_layer_norm_rms_eps(s.eps)
    w.add_rope_freq_base(s.rope_base)
    w.add_sliding_window(s.n_swa)
    w.add_attn_logit_softcapping(s.attn_softcap)
    w.add_final_logit_softcapping(s.final_softcap)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    for name, value, vtype, sub in fields:
        w.add_key_value(name, value, vtype, sub_type=sub)

    # embeddings are scaled by sqrt(n_embd) in the graph; F16 keeps the file small (vocab x n_embd)
    w.add_tensor("token_embd.weight", normal(n_vocab, s.n_embd, 1.0 / np.sqrt(s.n_embd)).astype(np.float16))
    # q and k at 3x the unit-variance scale: scores of a few units after 1/sqrt(head_dim), i.e. peaked attention
    qk_std = 3.0 / np.sqrt(s.n_embd)
    for il in range(s.n_layer):
        p = f"blk.{il}."
        w.add_tensor(p + "attn_norm.weight", norm_weight())
        w.add_tensor(p + "attn_q.weight", normal(s.n_head * s.head_dim, s.n_embd, qk_std))
        w.add_tensor(p + "attn_k.weight", normal(s.n_head_kv * s.head_dim, s.n_embd, qk_std))
        w.add_tensor(p + "attn_v.weight", normal(s.n_head_kv * s.head_dim, s.n_embd, 1.0 / np.sqrt(s.n_embd)))
        w.add_tensor(p + "attn_output.weight", normal(s.n_embd, s.n_head * s.head_dim,
                                                      1.0 / np.sqrt(s.n_head * s.head_dim)))
        w.add_tensor(p + "post_attention_norm.weight", norm_weight())
        w.add_tensor(p + "ffn_norm.weight", norm_weight())
        w.add_tensor(p + "ffn_gate.weight", normal(s.n_ff, s.n_embd, 1.0 / np.sqrt(s.n_embd)))
        w.add_tensor(p + "ffn_up.weight", normal(s.n_ff, s.n_embd, 1.0 / np.sqrt(s.n_embd)))
        w.add_tensor(p + "ffn_down.weight", normal(s.n_embd, s.n_ff, 1.0 / np.sqrt(s.n_ff)))
        w.add_tensor(p + "post_ffw_norm.weight", norm_weight())
    w.add_tensor("output_norm.weight", norm_weight())

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst
