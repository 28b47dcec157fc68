"""Settings stored next to a top_k when the user names only K: measured, not guessed.

Chosen with scripts/sparsek_grid.py on SmolLM2-135M and the Jargon File, ctx 2048, flash attention (README,
results/sparsek-grid.md): over window {0, 16, 64} x sinks {0, 4}, window 64 gave the lowest KL divergence to dense
at every K in {64, 128, 256, 512} in both modes; sinks 4 was lowest at K <= 256 and within 4 % at K = 512 (and
protects models with attention-sink heads); `group` beat `head` at every K and setting.
"""

from __future__ import annotations

from typing import Any

RECOMMENDED: dict[str, Any] = {"window": 64, "sinks": 4, "mode": "group"}


def complete(given: dict[str, Any], present: dict[str, Any] | None = None) -> dict[str, Any]:
    """given plus the recommended window, sinks and mode, for a top_k > 0, where neither `given` nor the file's
    `present` settings name them. Anything given is kept exactly as given."""
    if not given.get("top_k"):
        return dict(given)
    present = present or {}
    return {**{k: v for k, v in RECOMMENDED.items() if k not in present}, **given}
