"""The block-sparse prefill rule's NumPy reference (issue #22: numpy_llama.block_keep) on hand-built cases."""

from __future__ import annotations

import numpy as np
import pytest

import numpy_llama


def _qk(n_tok: int, hot_block: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    """One head of size 2: every query points along x; the keys of `hot_block` along x (large), the others along y."""
    q = np.zeros((n_tok, 1, 2))
    q[:, 0, 0] = 4.0
    k = np.zeros((n_tok, 1, 2))
    k[:, 0, 1] = 1.0
    k[hot_block * block:(hot_block + 1) * block, 0] = [4.0, 0.0]
    return q, k


@pytest.mark.parametrize("estimate", ["pooled", "sampled"])
def test_the_dominant_block_sinks_and_the_diagonal_are_kept(estimate: str) -> None:
    block, n_tok = 4, 24  # 6 blocks
    q, k = _qk(n_tok, hot_block=2, block=block)
    keep = numpy_llama.block_keep(q, k, block=block, gamma=0.5, group=1, sinks=1, local=1, estimate=estimate)
    last = keep[0, n_tok - 1]  # the last query: block 5
    kept_blocks = sorted({int(c) // block for c in np.flatnonzero(last)})
    assert kept_blocks == [0, 2, 5]
    # whole blocks, within the causal mask
    assert last[2 * block:3 * block].all() and not last[block:2 * block].any()
    assert not np.triu(keep[0], 1).any()


def test_gamma_one_keeps_every_causal_cell() -> None:
    rng = np.random.default_rng(0)
    q, k = rng.normal(size=(19, 2, 8)), rng.normal(size=(19, 1, 8))
    keep = numpy_llama.block_keep(q, k, block=4, gamma=1.0, group=2)
    assert np.array_equal(keep, np.broadcast_to(np.tril(np.ones((19, 19), dtype=bool)), keep.shape))


def test_heads_of_a_kv_head_share_cells_and_a_larger_gamma_keeps_more() -> None:
    rng = np.random.default_rng(1)
    q, k = rng.normal(size=(64, 4, 8)) * 2, rng.normal(size=(64, 2, 8)) * 2
    small = numpy_llama.block_keep(q, k, block=8, gamma=0.5, group=2, sinks=0, local=1)
    large = numpy_llama.block_keep(q, k, block=8, gamma=0.9, group=2, sinks=0, local=1)
    assert np.array_equal(small[0], small[1]) and np.array_equal(small[2], small[3])
    assert (large | small).sum() == large.sum() and large.sum() > small.sum()
