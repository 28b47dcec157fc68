"""Settings stored next to a top_k when the user names only K: measured, not guessed.

Chosen with scripts/sparsek_grid.py on SmolLM2-135M and the Jargon File, ctx 2048, flash attention (README,
results/sparsek-grid.md): over window {0, 16, 64} x sinks {0, 4}, window 64 gave the lowest KL divergence to dense
at every K in {64, 128, 256, 512} in both modes; sinks 4 was lowest at K <= 256 and within 4 % at K = 512 (and
protects models with attention-sink heads); `group` beat `head` at every K and setting.
"""

from __future__ import annotations

from pysparsek.sparsek.settings import SparsekSettings

RECOMMENDED = SparsekSettings(window=64, sinks=4, mode="group")


def complete(given: SparsekSettings, present: SparsekSettings | None = None) -> SparsekSettings:
    """given plus the recommended window, sinks and mode, for a top_k > 0, where neither `given` nor the file's
    `present` settings name them. Anything given is kept exactly as given."""
    if not given.top_k:
        return given
    already = (present or SparsekSettings()).given()
    fill = {name: value for name, value in RECOMMENDED.given().items() if name not in already}
    return SparsekSettings(**fill).replace(**given.given())
