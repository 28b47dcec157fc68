"""The recommended deployment, in one place: what every command and `llm.load` fill in around a K.

Chosen with scripts/sparsek_grid.py on SmolLM2-135M and the Jargon File, ctx 2048, flash attention (README,
results/sparsek-grid.md): over window {0, 16, 64} x sinks {0, 4}, window 64 gave the lowest KL divergence to dense
at every K in {64, 128, 256, 512} in both modes; sinks 4 was lowest at K <= 256 and within 4 % at K = 512 (and
protects models with attention-sink heads); `group` beat `head` at every K and setting.
Choosing the kept cells from a q4_0 copy of K costs 1.02-1.08x exact scoring's KL in the decode regime
(results/decode-quality.md) and makes decode at depth 8192 1.9-2.1x dense on a 2-core CPU
(results/cpu-speed-targets.md); the decode-only policy (max_ubatch 1: Sparse-K only for ubatches of one token)
keeps prompt processing on dense's graph, so prompts run at dense speed with dense's logits.

`bench`, `serve`, `convert`, `meta set` and `llm.load` complete a K with these unless told `--exact` (`exact=True`);
`regress` and its baseline keep their own explicit settings.
"""

from __future__ import annotations

from pysparsek.sparsek.settings import SparsekSettings

RECOMMENDED = SparsekSettings(window=64, sinks=4, mode="group", score_type="q4_0", max_ubatch=1)


def complete(given: SparsekSettings, present: SparsekSettings | None = None) -> SparsekSettings:
    """given plus the recommended settings, for a top_k > 0, where neither `given` nor the file's `present`
    settings name them. Anything given is kept exactly as given."""
    if not given.top_k:
        return given
    already = (present or SparsekSettings()).given()
    fill = {name: value for name, value in RECOMMENDED.given().items() if name not in already}
    return SparsekSettings(**fill).replace(**given.given())


def for_run(given: SparsekSettings, exact: bool = False) -> SparsekSettings:
    """What a measurement runs (every field set; its top_k as given): the recommended settings under what is given,
    or, with exact, what is given and llama.cpp's defaults (off) for the rest."""
    return (given if exact else RECOMMENDED.replace(**given.given())).resolved()


def describe() -> str:
    """The recommended settings as one line of text ("mode group, window 64, ...")."""
    return ", ".join(f"{name} {value}" for name, value in RECOMMENDED.given().items())


def decode_only(s: SparsekSettings, ubatch: int) -> bool:
    """Whether a setting leaves prompts (ubatches of more than max_ubatch tokens, up to `ubatch`) dense: its quality
    is then the decode regime's."""
    r = s.resolved()
    return 0 < int(r.max_ubatch or 0) < ubatch


def is_recommended(s: SparsekSettings) -> bool:
    """Whether a setting (its top_k aside) is the recommended deployment."""
    return s.resolved().replace(top_k=None) == for_run(SparsekSettings()).replace(top_k=None)
