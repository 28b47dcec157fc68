"""Sparse-K across devices, on one machine: two loopback ggml-rpc-server processes are the devices, and
llama-perplexity splits the model over them by layers (`-sm layer`) or by KV heads through ggml's meta backend
(`-sm tensor`); each run is held to the same run on one device (the local CPU).

`-sm tensor` splits a layer's heads only in granules (SmolLM2: 3 KV heads, granules of 2), so with an even split
each layer's attention lands whole on one server, alternating by layer, while the FFN is split in halves. The
products whose inner dimension is split (FFN down, attention output) are summed across devices, in another order
than one device sums them: that rounding difference, amplified by the 8-bit quantization of activations, moves
SmolLM2's perplexity by about 1 % dense or sparse, so such a run is compared by KL divergence.
`TENSOR_EXACT` instead gives the even layers' heads 2:1 to the two servers (`-ts 2,1`) and keeps those two
products on the CPU (`-ot`): every value is then computed as on one device, and the results must be identical.
"""

from __future__ import annotations

import dataclasses
import filecmp
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pysparsek.llamacpp import rpc
from pysparsek.llamacpp.build import Build
from pysparsek.measure import perplexity
from pysparsek.measure.perplexity import PerplexityResult, Settings
from pysparsek.sparsek.settings import SparsekSettings

LAYER = ("-sm", "layer")
TENSOR = ("-sm", "tensor")
TENSOR_EXACT = ("-sm", "tensor", "-ts", "2,1", "-ot", "ffn_=CPU,attn_output=CPU")

# what issue #19 asks for: group and head at K=64, with and without the q4_0 score copy
SETTINGS = (
    SparsekSettings(top_k=0),
    SparsekSettings(top_k=64, mode="group"),
    SparsekSettings(top_k=64, mode="group", score_type="q4_0"),
    SparsekSettings(top_k=64, mode="head"),
    SparsekSettings(top_k=64, mode="head", score_type="q4_0"),
)


def remote(s: Settings, endpoints: str, *more: str) -> Settings:
    """The same run with every layer on the RPC servers `endpoints` (HOST:PORT,...)."""
    return dataclasses.replace(s, extra=(*s.extra, "-ngl", "99", "--rpc", endpoints, *more))


@dataclass
class Row:
    settings: SparsekSettings
    local: PerplexityResult
    layer: PerplexityResult
    layer_identical: bool          # per-token log-probabilities byte for byte
    tensor_exact: PerplexityResult
    tensor_exact_identical: bool
    tensor: PerplexityResult       # a --kl-divergence run against the local one: PPL(Q), KLD, same top token


def measure(build: Build, model: Path, text: Path, base: Settings, endpoints: str, out: Path,
            settings: Sequence[SparsekSettings] = SETTINGS,
            progress: Callable[[str], None] = lambda _: None) -> list[Row]:
    """Each setting on one device and over the servers at `endpoints` in the three ways."""
    rows = []
    for i, sk in enumerate(settings):
        s = dataclasses.replace(base, sparsek=sk)
        progress(f"{sk.label}: one device")
        local_logits = out / f"{i}-local.bin"
        local = perplexity.measure(build, model, text, s, save_logits=local_logits)
        runs: dict[str, tuple[PerplexityResult, bool]] = {}
        for name, split in (("layer", LAYER), ("tensor_exact", TENSOR_EXACT)):
            progress(f"{sk.label}: {' '.join(split)}")
            logits = out / f"{i}-{name}.bin"
            res = perplexity.measure(build, model, text, remote(s, endpoints, *split), save_logits=logits)
            runs[name] = (res, filecmp.cmp(logits, local_logits, shallow=False))
        progress(f"{sk.label}: {' '.join(TENSOR)}")
        tensor = perplexity.measure(build, model, text, remote(s, endpoints, *TENSOR), kld_base=local_logits)
        rows.append(Row(sk, local, *runs["layer"], *runs["tensor_exact"], tensor))
    return rows


def measure_local_servers(build: Build, model: Path, text: Path, base: Settings, out: Path, *,
                          threads: int | None = None, settings: Sequence[SparsekSettings] = SETTINGS,
                          progress: Callable[[str], None] = lambda _: None) -> list[Row]:
    """`measure` over two ggml-rpc-server processes of `build` on 127.0.0.1, stopped afterwards."""
    with rpc.local_servers(build, 2, out, threads=threads) as servers:
        return measure(build, model, text, base, servers.endpoints, out, settings, progress)


def table(rows: Sequence[Row]) -> str:
    lines = ["| setting | one device | -sm layer | -sm tensor, heads 2:1, sums on the CPU | -sm tensor | "
             "KLD vs one device | same top token |",
             "|---|---|---|---|---|---|---|"]

    def cell(res: PerplexityResult, identical: bool) -> str:
        return f"{res.ppl:.4f} ({'identical' if identical else 'differs'})"

    for r in rows:
        lines.append(f"| {r.settings.label} | {r.local.ppl:.4f} | {cell(r.layer, r.layer_identical)} | "
                     f"{cell(r.tensor_exact, r.tensor_exact_identical)} | {r.tensor.ppl:.4f} | "
                     f"{r.tensor.kld_mean:.6f} ± {r.tensor.kld_stderr:.6f} | {r.tensor.same_top_pct:.2f} % |")
    return "\n".join(lines)
