"""Long-context retrieval: a number hidden at several depths of filler text (as in llama.cpp's
examples/passkey), recalled by greedy decoding, dense vs Sparse-K. Top-K can only lose what it drops, so this
stresses exactly that."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from pysparsek.sparsek import llm
from pysparsek.sparsek.settings import SparsekSettings

PREFIX = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. "
          "I will quiz you about the important information there.")
JUNK = " The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
SUFFIX = " What is the pass key? The pass key is"


@dataclass(frozen=True)
class Trial:
    n_tokens: int      # prompt length in tokens
    depth: float       # where the key sits, as a fraction of the filler
    key: int
    top_k: int         # 0 = dense
    answer: str
    correct: bool


def prompt(n_junk: int, i_pos: int, key: int) -> str:
    parts = [PREFIX]
    for i in range(n_junk):
        if i == i_pos:
            parts.append(f" The pass key is {key}. Remember it. {key} is the pass key.")
        parts.append(JUNK)
    parts.append(SUFFIX)
    return "".join(parts)


def run(model: Path, lengths: list[int], depths: list[float], topks: list[int],
        sparsek: SparsekSettings | None = None, seed: int = 1234, n_threads: int | None = None) -> list[Trial]:
    """One trial per (length, depth, K); K = 0 is dense, other Ks use `sparsek` (default: head mode, nothing else
    kept). The same prompts are used for every K."""
    base = (sparsek or SparsekSettings()).resolved()
    m = llm.load(model, n_ctx=max(lengths) + 64, n_batch=512, n_ubatch=512, n_threads=n_threads,
                 n_threads_batch=n_threads, flash_attn=True)
    junk_tokens = len(m.tokenize(JUNK.encode(), add_bos=False))
    rng = random.Random(seed)
    trials = []
    for n_tokens in lengths:
        n_junk = max(1, (n_tokens - 64) // junk_tokens)
        for depth in depths:
            key = rng.randint(10000, 99999)
            tokens = m.tokenize(prompt(n_junk, min(n_junk - 1, int(depth * n_junk)), key).encode())
            for k in topks:
                llm.set_sparsek(m, base.replace(top_k=k) if k else SparsekSettings.off())
                m.reset()
                out = []
                for tok in m.generate(tokens, top_k=1, temp=0.0, reset=True):
                    if tok == m.token_eos() or len(out) == 8:
                        break
                    out.append(tok)
                answer = m.detokenize(out).decode(errors="replace").strip()
                trials.append(Trial(len(tokens), depth, key, k, answer, str(key) in answer))
    m.close()
    return trials


def accuracy(trials: list[Trial], top_k: int) -> float:
    mine = [t for t in trials if t.top_k == top_k]
    return sum(t.correct for t in mine) / len(mine) if mine else float("nan")
