"""An independent Gemma-2 forward pass in NumPy (no ggml): sliding-window layers, attention soft-capping and the
documented Sparse-K rule including window, stride and sinks. Used with tests/tiny_gemma2.py.

Rounding that llama.cpp's CPU path applies is mirrored where it is large enough to move a top-K decision: the
KV cache holds K and V in F16, and Q meets the F16 cache as F16.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from numpy_llama import _field, _rms_norm, sparsek_keep


@dataclass
class Gemma2Weights:
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_swa: int
    attn_softcap: float
    final_softcap: float
    rope_base: float
    eps: float
    tensors: dict[str, np.ndarray]

    def is_swa(self, il: int) -> bool:
        return il % 2 == 0  # llama.cpp's gemma2 pattern: every other layer, starting with the first


def load(path: Path) -> Gemma2Weights:
    reader = gguf.GGUFReader(path)
    if _field(reader, "general.architecture") != "gemma2":
        raise ValueError("not a gemma2 GGUF")
    tensors = {t.name: gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float64) for t in reader.tensors}
    n_head = int(_field(reader, "gemma2.attention.head_count"))
    return Gemma2Weights(
        n_layer=int(_field(reader, "gemma2.block_count")),
        n_head=n_head,
        n_head_kv=int(_field(reader, "gemma2.attention.head_count_kv")),
        head_dim=int(_field(reader, "gemma2.attention.key_length")),
        n_swa=int(_field(reader, "gemma2.attention.sliding_window")),
        attn_softcap=float(_field(reader, "gemma2.attn_logit_softcapping")),
        final_softcap=float(_field(reader, "gemma2.final_logit_softcapping")),
        rope_base=float(_field(reader, "gemma2.rope.freq_base")),
        eps=float(_field(reader, "gemma2.attention.layer_norm_rms_epsilon")),
        tensors=tensors,
    )


def _rope_neox(x: np.ndarray, base: float) -> np.ndarray:
    """NeoX RoPE (Gemma's): rotates element i with element i + d/2."""
    n_tok, _, d = x.shape
    pos = np.arange(n_tok, dtype=np.float64)[:, None]
    theta = pos * base ** (-np.arange(0, d, 2, dtype=np.float64) / d)[None, :]
    cos, sin = np.cos(theta)[:, None, :], np.sin(theta)[:, None, :]
    x0, x1 = x[..., : d // 2], x[..., d // 2:]
    return np.concatenate([x0 * cos - x1 * sin, x0 * sin + x1 * cos], axis=-1)


def _f16(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).astype(np.float64)


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))


def logits(w: Gemma2Weights, tokens: list[int], top_k: int = 0, mode: str = "head", window: int = 0,
           stride: int = 0, sinks: int = 0, lowest: bool = False, selection_noise: float = 0.0,
           select_past_window: bool = False) -> np.ndarray:
    """Logits for every position; `selection_noise` perturbs only the scores the selection sees (fixed seed).
    `select_past_window` is a deliberately wrong rule: the top-K is chosen among all causal cells, ignoring the
    sliding window, so cells the window then removes waste some of the K slots."""
    rng = np.random.default_rng(0)
    t = w.tensors
    n_tok, d = len(tokens), w.head_dim
    n_embd = t["token_embd.weight"].shape[1]
    group = w.n_head // w.n_head_kv
    sets = {"head": [[h] for h in range(w.n_head)],
            "group": [list(range(g * group, (g + 1) * group)) for g in range(w.n_head_kv)],
            "token": [list(range(w.n_head))]}[mode]
    rel = np.arange(n_tok)[:, None] - np.arange(n_tok)[None, :]   # query position - key position
    causal = rel >= 0
    x = t["token_embd.weight"][tokens] * np.sqrt(n_embd)
    for il in range(w.n_layer):
        p = f"blk.{il}."
        allowed = causal & (rel < w.n_swa) if w.is_swa(il) else causal
        h = _rms_norm(x, t[p + "attn_norm.weight"], w.eps)
        q = _rope_neox((h @ t[p + "attn_q.weight"].T).reshape(n_tok, w.n_head, d), w.rope_base) / np.sqrt(d)
        k = _rope_neox((h @ t[p + "attn_k.weight"].T).reshape(n_tok, w.n_head_kv, d), w.rope_base)
        v = (h @ t[p + "attn_v.weight"].T).reshape(n_tok, w.n_head_kv, d)
        q, k, v = _f16(q), np.repeat(_f16(k), group, axis=1), np.repeat(_f16(v), group, axis=1)
        scores = np.einsum("qhd,khd->hqk", q, k)
        scores = w.attn_softcap * np.tanh(scores / w.attn_softcap)
        mask = np.broadcast_to(allowed, scores.shape)
        if top_k > 0:
            seen = scores + rng.normal(0.0, selection_noise, scores.shape) if selection_noise else scores
            selectable = causal if select_past_window else allowed
            mask = mask & sparsek_keep(seen, selectable, top_k, sets, window, stride, sinks, lowest)
        scores = np.where(mask, scores, -np.inf)
        probs = np.exp(scores - scores.max(axis=-1, keepdims=True))
        probs /= probs.sum(axis=-1, keepdims=True)
        if select_past_window:
            probs = np.nan_to_num(probs)  # the wrong rule can leave a row with nothing: attend to nothing
        attn = np.einsum("hqk,khd->qhd", probs, v).reshape(n_tok, -1)
        attn = _rms_norm(attn @ t[p + "attn_output.weight"].T, t[p + "post_attention_norm.weight"], w.eps)
        x = x + attn
        h = _rms_norm(x, t[p + "ffn_norm.weight"], w.eps)
        ffn = (_gelu(h @ t[p + "ffn_gate.weight"].T) * (h @ t[p + "ffn_up.weight"].T)) @ t[p + "ffn_down.weight"].T
        x = x + _rms_norm(ffn, t[p + "post_ffw_norm.weight"], w.eps)
    x = _rms_norm(x, t["output_norm.weight"], w.eps)
    out = _f16(x) @ t["token_embd.weight"].T
    return w.final_softcap * np.tanh(out / w.final_softcap)
