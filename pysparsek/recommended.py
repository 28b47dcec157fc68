"""Settings stored next to a top_k when the user names only K: measured, not guessed.

Chosen from scripts/sparsek_grid.py on SmolLM2-135M and the Jargon File (results/sparsek-grid.md): among windows
{0, 16, 64} and sinks {0, 4}, the combination with the lowest KL divergence to dense at every K in {64 .. 512} with
flash attention, in both `head` and `group` mode.
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
