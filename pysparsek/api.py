"""The public Python surface: the operations of the command line as functions with typed results.

    from pysparsek import api
    m = api.load("model.gguf", api.SparsekSettings(top_k=64), n_ctx=4096)   # + the recommended settings
    m = api.load("model.gguf", api.SparsekSettings(top_k=64, mode="head"), exact=True, n_ctx=4096)  # only these
    result = api.bench(topk=[64, 256], depths=[0, 2048])        # api.BenchResult: .quality, .speed
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pysparsek.data import convert as _convert
from pysparsek.data import corpus, models
from pysparsek.llamacpp import build as _build
from pysparsek.measure import bench as _bench
from pysparsek.measure.results import BenchOptions, BenchResult, Quality, QualityRow, Speed, SpeedRow
from pysparsek.report import markdown
from pysparsek.sparsek import meta as _meta
from pysparsek.sparsek import recommended as _recommended
from pysparsek.sparsek.llm import get_sparsek, load, model_sparsek, set_sparsek
from pysparsek.sparsek.settings import SparsekSettings

__all__ = [
    "BenchOptions",
    "BenchResult",
    "Quality",
    "QualityRow",
    "SparsekSettings",
    "Speed",
    "SpeedRow",
    "bench",
    "build",
    "convert",
    "get_sparsek",
    "load",
    "meta_clear",
    "meta_set",
    "meta_show",
    "model_sparsek",
    "set_sparsek",
]


def build(flavor: str = "patched", backend: str = "cpu") -> _build.Build:
    """Build (incrementally) the stock or patched llama.cpp; returns where its tools and libraries are."""
    return _build.build(flavor, backend)


def bench(model: str | Path | None = None, topk: list[int] | None = None, text: str | Path | None = None,
          out: str | Path | None = None, sparsek: SparsekSettings | None = None, exact: bool = False,
          **options: Any) -> BenchResult:
    """Quality and speed of Sparse-K vs dense at each K with the `sparsek` setting: the recommended deployment
    under the fields it sets (all of them as given, the rest off, with `exact`); options are BenchOptions fields
    (ctx, depths, cache_types, ...). The quality regime defaults to the one the setting's policy implies."""
    model_path = models.check_gguf(Path(model)) if model else models.default_model()
    text_path = Path(text) if text else corpus.default_text()
    setting = _recommended.for_run(sparsek or SparsekSettings(), exact=exact)
    options.setdefault("regime", "decode" if _recommended.decode_only(setting, options.get("ubatch", 512))
                       else "prompt")
    result = _bench.run(BenchOptions(model=model_path, text=text_path, topks=topk or [64], sparsek=setting,
                                     quiet=True, **options))
    if out:
        markdown.write_report(result, Path(out))
    return result


def convert(checkpoint: str | Path, out: str | Path, outtype: str = "f16", quant: str | None = None,
            sparsek: SparsekSettings | None = None) -> Path:
    """HF checkpoint -> GGUF (optionally quantized) with the given Sparse-K settings in its metadata."""
    return _convert.convert(str(checkpoint), Path(out), outtype=outtype, quant=quant, sparsek=sparsek)


def meta_show(model: str | Path) -> SparsekSettings:
    return _meta.read(Path(model))


def meta_set(model: str | Path, out: str | Path, sparsek: SparsekSettings) -> Path:
    return _meta.write(Path(model), Path(out), sparsek)


def meta_clear(model: str | Path, out: str | Path) -> Path:
    return _meta.write(Path(model), Path(out), clear=True)
