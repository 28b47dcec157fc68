"""An independent Llama forward pass in NumPy (no ggml) with the documented Sparse-K rule.

Weights are read and dequantized from the GGUF file with the gguf package. It exists to check the patched
llama.cpp against an implementation that shares none of its code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np


@dataclass
class LlamaWeights:
    n_layer: int
    n_head: int
    n_head_kv: int
    rope_base: float
    eps: float
    tensors: dict[str, np.ndarray]


def _field(reader: gguf.GGUFReader, name: str):
    field = reader.get_field(name)
    if field is None:
        raise KeyError(name)
    return field.contents()


def load(path: Path) -> LlamaWeights:
    reader = gguf.GGUFReader(path)
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise ValueError(f"only the llama architecture is implemented, not {arch}")
    tensors = {t.name: gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32) for t in reader.tensors}
    return LlamaWeights(
        n_layer=int(_field(reader, "llama.block_count")),
        n_head=int(_field(reader, "llama.attention.head_count")),
        n_head_kv=int(_field(reader, "llama.attention.head_count_kv")),
        rope_base=float(_field(reader, "llama.rope.freq_base")),
        eps=float(_field(reader, "llama.attention.layer_norm_rms_epsilon")),
        tensors=tensors,
    )


def _rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def _rope(x: np.ndarray, base: float) -> np.ndarray:
    """llama.cpp's 'normal' RoPE: rotates adjacent pairs (GGUF conversion permutes Q/K weights for it)."""
    n_tok, _, d = x.shape
    pos = np.arange(n_tok, dtype=np.float64)[:, None]
    theta = pos * base ** (-np.arange(0, d, 2, dtype=np.float64) / d)[None, :]
    cos, sin = np.cos(theta)[:, None, :], np.sin(theta)[:, None, :]
    x0, x1 = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = x0 * cos - x1 * sin
    out[..., 1::2] = x0 * sin + x1 * cos
    return out


def pooled_scores(logits: np.ndarray) -> np.ndarray:
    """[n_heads_in_set, n_cells] -> [n_cells]: one head's logits as they are, else max over heads of log-softmax."""
    if logits.shape[0] == 1:
        return logits[0]
    peak = logits.max(axis=1, keepdims=True)
    log_prob = logits - (peak + np.log(np.exp(logits - peak).sum(axis=1, keepdims=True)))
    return log_prob.max(axis=0)


def sparsek_keep(scores: np.ndarray, allowed: np.ndarray, top_k: int, sets: list[list[int]], window: int = 0,
                 stride: int = 0, sinks: int = 0, lowest: bool = False, raw_max: bool = False,
                 rows: range | None = None) -> np.ndarray:
    """The documented rule for one sequence at positions 0..n-1. scores [n_head, n_tok, n_tok] are the logits
    attention uses (scaled, soft-capped); allowed [n_tok, n_tok] is the model's own mask (causal, sliding window).
    Kept = allowed ∩ (top_k of the set's pooled scores, ties to the lowest position ∪ the `window` most recent
    allowed ∪ stride multiples ∪ first `sinks`); rows with <= top_k allowed cells are kept whole. A set of one head
    ranks its logits; a set of several ranks each cell by the highest log-probability any of its heads gives it
    (log-softmax over the allowed cells). `lowest`: a deliberately wrong rule (K lowest); `raw_max`: the earlier
    pooling by the max of raw logits, which lets the head with the largest logits take every slot. `rows`: the
    query rows the rule applies to (the others keep every allowed cell: a dense prompt)."""
    n_tok = scores.shape[1]
    keep = np.zeros(scores.shape, dtype=bool)
    pos = np.arange(n_tok)
    rows = range(n_tok) if rows is None else rows
    for t in range(n_tok):
        if t not in rows:
            keep[:, t] = allowed[t]
            continue
        cells = np.flatnonzero(allowed[t])
        if len(cells) <= top_k:
            keep[:, t, cells] = True
            continue
        by_position = np.zeros(n_tok, dtype=bool)
        by_position[cells[-window:] if window > 0 else []] = True
        if stride > 0:
            by_position |= pos % stride == 0
        by_position[:sinks] = True
        by_position &= allowed[t]
        for heads in sets:
            pooled = scores[heads, t][:, cells].max(axis=0) if raw_max else pooled_scores(scores[heads, t][:, cells])
            order = np.argsort(pooled if lowest else -pooled, kind="stable")[:top_k]
            keep[np.ix_(heads, [t], cells[order])] = True
            keep[np.ix_(heads, [t], np.flatnonzero(by_position))] = True
    return keep


def block_keep(q: np.ndarray, k: np.ndarray, block: int, gamma: float, group: int, sinks: int = 1, local: int = 1,
               estimate: str = "pooled", r: int = 16) -> np.ndarray:
    """Block-sparse prefill (issue #22; FlexPrefill's query-aware block pattern, simplified) for one sequence at
    positions 0..n-1. q [n_tok, n_head, d] and k [n_tok, n_head_kv, d] as attention sees them (RoPE applied).
    Queries and keys form blocks of `block` positions. For each query block and KV head, the attention mass each
    causal key block would get is estimated — `pooled`: softmax over key blocks of mean(q_block) · mean(k_block) /
    sqrt(d); `sampled`: the exact attention of the block's last `r` queries, summed per key block; `none`: no
    estimate, the static pattern of sinks and local blocks only (A-shape) — and averaged over
    the KV head's `group` query heads; the key blocks are taken by descending mass until their share reaches `gamma`,
    plus the first `sinks` blocks and the `local` most recent ones (the diagonal included). Returns the kept cells
    [n_head, n_tok, n_tok] (within the causal mask; every query head of a KV head keeps the same cells)."""
    n_tok, n_head, d = q.shape
    n_head_kv = k.shape[1]
    nb = (n_tok + block - 1) // block
    ids = np.arange(n_tok) // block
    counts = np.bincount(ids, minlength=nb)[:, None, None]
    mass = np.zeros((n_head, nb, nb))
    causal_b = np.tril(np.ones((nb, nb), dtype=bool))
    if estimate == "pooled":
        qb = np.zeros((nb, n_head, d))
        kb = np.zeros((nb, n_head_kv, d))
        np.add.at(qb, ids, q)
        np.add.at(kb, ids, k)
        qb /= counts
        kb /= counts
        s = np.einsum("ihd,jhd->hij", qb, np.repeat(kb, group, axis=1)) / np.sqrt(d)
        s = np.where(causal_b, s, -np.inf)
        s = np.exp(s - s.max(axis=-1, keepdims=True))
        mass = s / s.sum(axis=-1, keepdims=True)
    elif estimate == "sampled":
        kk = np.repeat(k, group, axis=1)
        for i in range(nb):
            rows = np.arange(min((i + 1) * block, n_tok) - min(r, counts[i, 0, 0]), min((i + 1) * block, n_tok))
            s = np.einsum("qhd,khd->hqk", q[rows], kk) / np.sqrt(d)
            s = np.where(np.arange(n_tok)[None, None, :] <= rows[None, :, None], s, -np.inf)
            p = np.exp(s - s.max(axis=-1, keepdims=True))
            p /= p.sum(axis=-1, keepdims=True)
            per_block = np.zeros((n_head, len(rows), nb))
            np.add.at(per_block, (slice(None), slice(None), ids), p)
            mass[:, i, :] = per_block.mean(axis=1)
    elif estimate != "none":  # none: the static pattern of sinks and local blocks alone (gamma unused)
        raise ValueError(f"unknown estimate {estimate!r}")
    mass_kv = mass.reshape(n_head_kv, group, nb, nb).mean(axis=1)
    keep_b = np.zeros((n_head_kv, nb, nb), dtype=bool)
    for g in range(n_head_kv):
        for i in range(nb):
            order = np.argsort(-mass_kv[g, i, : i + 1], kind="stable")
            share = np.cumsum(mass_kv[g, i, order]) / max(mass_kv[g, i, : i + 1].sum(), 1e-30)
            n_take = int(np.searchsorted(share, gamma) + 1) if estimate != "none" else 0
            keep_b[g, i, order[:n_take]] = True
            keep_b[g, i, : min(sinks, i + 1)] = True
            keep_b[g, i, max(0, i - local + 1): i + 1] = True
    cells = keep_b[:, ids][:, :, ids] & np.tril(np.ones((n_tok, n_tok), dtype=bool))
    return np.repeat(cells, group, axis=0)


def quantized_scores(q: np.ndarray, k: np.ndarray, score_type: str) -> np.ndarray:
    """Selection scores [head, query, key] from a copy of K in `score_type` (q8_0, q4_0): K per cell quantized
    from its full-precision row (as the KV cache's copy is written), Q quantized to q8_0 (the activation type
    ggml's q4_0/q8_0 dot products use); gguf-py's NumPy quantizers, not ggml's code."""
    from gguf import GGMLQuantizationType, quants

    qt = {"q8_0": GGMLQuantizationType.Q8_0, "q4_0": GGMLQuantizationType.Q4_0}[score_type]
    n_q, n_head = q.shape[:2]
    n_k, n_head_kv = k.shape[:2]
    kq = quants.dequantize(quants.quantize(k.reshape(n_k, -1).astype(np.float32), qt), qt).reshape(k.shape)
    qq = quants.dequantize(quants.quantize(q.reshape(n_q, -1).astype(np.float32), GGMLQuantizationType.Q8_0),
                           GGMLQuantizationType.Q8_0).reshape(q.shape)
    kq = np.repeat(kq.astype(np.float64), n_head // n_head_kv, axis=1)
    return np.einsum("qhd,khd->hqk", qq.astype(np.float64), kq)


def sparq_scores(q: np.ndarray, k: np.ndarray, r: int, per_kv_head: bool = False) -> np.ndarray:
    """SparQ's selection scores [head, query, key] (Ribar et al., arXiv 2312.04985), written from the paper: for
    each query head, the r components i_r with the largest |q|; the score is q[i_r].k[i_r], times
    sqrt(|q|_1 / |q[i_r]|_1) (the paper's softmax temperature sqrt(d |q[i_r]|_1 / |q|_1) in place of sqrt(d); the
    caller divides by sqrt(d)). A positive factor per head and query: it changes no head's own ranking, only how
    heads pool by probability. k [key, kv head, d] as the copy holds it (F16). `per_kv_head` (sparq_shared, in the
    modes whose query heads of a KV head select together, group and token): those heads share r components, the
    ones with the largest sum of |q| over them (the r channel rows are then read once per KV head)."""
    n_q, n_head, d = q.shape
    group = n_head // k.shape[1]
    r = min(r, d)
    if per_kv_head:
        pooled = np.abs(q).reshape(n_q, k.shape[1], group, d).sum(axis=2)         # [query, kv head, d]
        comp = np.repeat(np.argsort(-pooled, axis=-1, kind="stable")[..., :r], group, axis=1)
    else:
        comp = np.argsort(-np.abs(q), axis=-1, kind="stable")[..., :r]        # [query, head, r]
    chosen = np.zeros(q.shape, dtype=bool)
    np.put_along_axis(chosen, comp, True, axis=-1)
    q_r = np.where(chosen, q, 0.0)                                          # q on i_r, 0 elsewhere
    l1, l1_r = np.abs(q).sum(axis=-1), np.abs(q_r).sum(axis=-1)             # [query, head]
    factor = np.where(l1_r > 0, np.sqrt(l1 / np.where(l1_r > 0, l1_r, 1.0)), 1.0)
    kr = np.repeat(k.astype(np.float64), group, axis=1)
    return np.einsum("qhd,khd->hqk", q_r, kr) * factor.T[:, :, None]


def logits(w: LlamaWeights, tokens: list[int], top_k: int = 0, mode: str = "head", lowest: bool = False,
           selection_noise: float = 0.0, raw_max: bool = False, score_type: str = "none", sparq_r: int = 0,
           sparq_shared: int = 0, sparse_from: int = 0, mean_v: bool = False,
           blocks: dict | None = None, kept: list[float] | None = None) -> np.ndarray:
    """Logits for every position; `selection_noise` perturbs only the scores the selection sees (fixed seed), to
    measure how sensitive the result is to near-ties; `score_type` q8_0/q4_0 makes the selection score from
    quantized keys (quantized_scores) while attention uses the F16 keys; `sparq_r` > 0 makes it score with SparQ
    (sparq_scores) from the F16 keys, each query head's own components, or with `sparq_shared` those shared by a KV
    head's query heads (not in mode head, where each head selects alone). `sparse_from`: rows before it attend
    densely (the decode regime: a dense prompt, then tokens decoded sparsely; causal attention makes one forward
    pass equal to decoding them one by one). `mean_v`: SparQ's mean-value reallocation, out = a attn(kept) + (1 - a)
    mean(V over allowed cells), a = the softmax mass of the kept cells under the selection's own scores. `blocks`:
    block_keep's arguments (block, gamma, sinks, local, estimate) for block-sparse prompts; `kept`, if given, gets
    each layer's share of the causal cells kept."""
    rng = np.random.default_rng(0)
    t = w.tensors
    n_tok = len(tokens)
    x = t["token_embd.weight"][tokens].astype(np.float64)
    d = x.shape[1] // w.n_head
    group = w.n_head // w.n_head_kv
    sets = {"head": [[h] for h in range(w.n_head)],
            "group": [list(range(g * group, (g + 1) * group)) for g in range(w.n_head_kv)],
            "token": [list(range(w.n_head))]}[mode]
    causal = np.tril(np.ones((n_tok, n_tok), dtype=bool))
    for il in range(w.n_layer):
        p = f"blk.{il}."
        h = _rms_norm(x, t[p + "attn_norm.weight"], w.eps)
        q = _rope((h @ t[p + "attn_q.weight"].T).reshape(n_tok, w.n_head, d), w.rope_base)
        k = _rope((h @ t[p + "attn_k.weight"].T).reshape(n_tok, w.n_head_kv, d), w.rope_base)
        v = (h @ t[p + "attn_v.weight"].T).reshape(n_tok, w.n_head_kv, d)
        selection = None if score_type == "none" else quantized_scores(q, k, score_type) / np.sqrt(d)
        # the KV cache holds K and V in F16 (llama.cpp default): round them the same way
        k = k.astype(np.float16).astype(np.float64)
        v = v.astype(np.float16).astype(np.float64)
        if sparq_r > 0:
            selection = sparq_scores(q, k, sparq_r, per_kv_head=bool(sparq_shared) and mode != "head") / np.sqrt(d)
        block_cells = None if blocks is None else block_keep(q, k, group=group, **blocks)
        k = np.repeat(k, group, axis=1)
        v = np.repeat(v, group, axis=1)
        scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(d)
        allowed = np.broadcast_to(causal, scores.shape)
        if block_cells is not None:
            allowed = allowed & block_cells
        seen = scores if selection is None else selection
        if top_k > 0:
            seen = seen + rng.normal(0.0, selection_noise, seen.shape) if selection_noise else seen
            allowed = allowed & sparsek_keep(seen, causal, top_k, sets, lowest=lowest, raw_max=raw_max,
                                             rows=range(sparse_from, n_tok))
        if kept is not None:
            kept.append(float(allowed.sum() / (causal.sum() * allowed.shape[0])))
        scores = np.where(allowed, scores, -np.inf)
        probs = np.exp(scores - scores.max(axis=-1, keepdims=True))
        probs /= probs.sum(axis=-1, keepdims=True)
        attn = np.einsum("hqk,khd->qhd", probs, v)
        if mean_v and top_k > 0:
            full = np.where(causal, seen, -np.inf)
            p_sel = np.exp(full - full.max(axis=-1, keepdims=True))
            p_sel /= p_sel.sum(axis=-1, keepdims=True)
            alpha = np.where(allowed, p_sel, 0.0).sum(axis=-1)                       # [head, query]
            mean = np.cumsum(v, axis=0) / np.arange(1, n_tok + 1)[:, None, None]   # causal mean(V), [query, head, d]
            alpha = alpha.T[:, :, None]
            attn = np.where(np.arange(n_tok)[:, None, None] >= sparse_from, alpha * attn + (1 - alpha) * mean, attn)
        attn = attn.reshape(n_tok, -1)
        x = x + attn @ t[p + "attn_output.weight"].T
        h = _rms_norm(x, t[p + "ffn_norm.weight"], w.eps)
        gate = h @ t[p + "ffn_gate.weight"].T
        x = x + ((gate / (1.0 + np.exp(-gate))) * (h @ t[p + "ffn_up.weight"].T)) @ t[p + "ffn_down.weight"].T
    x = _rms_norm(x, t["output_norm.weight"], w.eps)
    out = t.get("output.weight", t["token_embd.weight"])
    return x @ out.T


def log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def kl(p_logits: np.ndarray, q_logits: np.ndarray) -> float:
    """Mean KL(P || Q) over rows."""
    lp, lq = log_softmax(p_logits.astype(np.float64)), log_softmax(q_logits.astype(np.float64))
    return float(np.mean(np.sum(np.exp(lp) * (lp - lq), axis=-1)))
