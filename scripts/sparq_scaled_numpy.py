"""Experiment (issue #21, not built): SparQ's r components chosen by |q_i| x mean |K_i| (a causal running mean of
each key channel's magnitude, per KV head) instead of |q_i| alone, in the independent NumPy Llama, decode regime,
mode group. Prints KL(dense || setting) over the decoded tokens for exact scoring, SparQ and the scaled SparQ.

    .venv/bin/python scripts/sparq_scaled_numpy.py PROMPT DECODE CHUNKS [R ...]   (e.g. 1024 256 3 16)
"""

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import sparq_numpy_decode as spd

from pysparsek.data import models

import numpy_llama

orig = numpy_llama.sparq_scores
MODE = {"scale": False}

def scaled(q: np.ndarray, k: np.ndarray, r: int, per_kv_head: bool = False) -> np.ndarray:
    if not MODE["scale"]:
        return orig(q, k, r, per_kv_head)
    n_q, n_head, d = q.shape
    group = n_head // k.shape[1]
    ak = np.abs(k.astype(np.float64))                                   # [key, kv, d]
    m = np.cumsum(ak, axis=0) / np.arange(1, ak.shape[0] + 1)[:, None, None]   # causal mean over keys <= t
    mq = np.repeat(m[:n_q], group, axis=1)                              # [query, head, d]
    crit = np.abs(q) * mq
    if per_kv_head:
        pooled = crit.reshape(n_q, k.shape[1], group, d).sum(axis=2)
        comp = np.repeat(np.argsort(-pooled, axis=-1, kind="stable")[..., :r], group, axis=1)
    else:
        comp = np.argsort(-crit, axis=-1, kind="stable")[..., :r]
    chosen = np.zeros(q.shape, dtype=bool)
    np.put_along_axis(chosen, comp, True, axis=-1)
    q_r = np.where(chosen, q, 0.0)
    l1, l1_r = (np.abs(q) * mq).sum(-1), (np.abs(q_r) * mq).sum(-1)
    factor = np.where(l1_r > 0, np.sqrt(l1 / np.where(l1_r > 0, l1_r, 1.0)), 1.0)
    kr = np.repeat(k.astype(np.float64), group, axis=1)
    return np.einsum("qhd,khd->hqk", q_r, kr) * factor.T[:, :, None]

numpy_llama.sparq_scores = scaled
P, T, C = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
model = models.default_model()
w = numpy_llama.load(model)
size = P + T
toks = spd.tokens_of_text(model, size * C)
settings = [("exact", {}, False)]
for r in [int(v) for v in sys.argv[4:]] or [16]:
    settings += [(f"sparq{r}", {"sparq_r": r}, False), (f"sparq{r}-scaled", {"sparq_r": r}, True)]
res: dict = {}
t0 = time.time()
for k in (128, 256):
    for name, extra, sc in settings:
        kls = []
        for c in range(C):
            chunk = toks[c * size:(c + 1) * size]
            rows = slice(P, size)
            MODE["scale"] = False
            if (k, c) not in res:
                res[(k, c)] = numpy_llama.log_softmax(numpy_llama.logits(w, chunk)[rows])
            dense = res[(k, c)]
            MODE["scale"] = sc
            lp = numpy_llama.log_softmax(
                numpy_llama.logits(w, chunk, top_k=k, mode="group", sparse_from=P, **extra)[rows])
            kls.append((np.exp(dense) * (dense - lp)).sum(-1))
        kl = float(np.concatenate(kls).mean())
        print(f"K={k} {name}: KL {kl:.4f} ({time.time()-t0:.0f} s)", flush=True)
