"""The operations of the command line as Python functions with typed results."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pysparsek import bench as _bench
from pysparsek import build as _build
from pysparsek import convert as _convert
from pysparsek import corpus, models
from pysparsek import meta as _meta


@dataclass(frozen=True)
class QualityRow:
    top_k: int
    ppl: float
    delta_ppl_pct: float
    kl_mean: float
    top1_agreement_pct: float


@dataclass(frozen=True)
class SpeedRow:
    top_k: int
    mode: str
    test: str
    depth: int
    tokens_per_s: float
    dense_tokens_per_s: float
    ratio: float
    ratio_min: float
    ratio_max: float


@dataclass(frozen=True)
class BenchResult:
    dense_ppl: float
    identical: bool          # stock == patched with Sparse-K off
    quality: list[QualityRow]
    speed: list[SpeedRow]
    document: dict[str, Any]  # the full results.json content

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> BenchResult:
        q = doc["quality"]
        return cls(
            dense_ppl=q["stock"]["ppl"], identical=q["identical"],
            quality=[QualityRow(s["top_k"], s["ppl"], s["delta_ppl_pct"], s["kl_mean"], s["top1_agreement_pct"])
                     for s in q["sparse"]],
            speed=[SpeedRow(s["top_k"], s["mode"], s["test"], s["depth"], s["tokens_per_s"], s["dense_tokens_per_s"],
                            s["ratio"], s["ratio_min"], s["ratio_max"]) for s in doc["speed"]["sparse"]],
            document=doc,
        )


def build(flavor: str = "patched", backend: str = "cpu") -> _build.Build:
    """Build (incrementally) the stock or patched llama.cpp; returns where its tools and libraries are."""
    return _build.build(flavor, backend)


def bench(model: str | Path | None = None, topk: list[int] | None = None, text: str | Path | None = None,
          out: str | Path | None = None, **options: Any) -> BenchResult:
    """Quality and speed of Sparse-K vs dense; options are BenchOptions fields (ctx, depths, mode, ...)."""
    model_path = models.check_gguf(Path(model)) if model else models.default_model()
    text_path = Path(text) if text else corpus.default_text()
    doc = _bench.run(_bench.BenchOptions(model=model_path, text=text_path, topks=topk or [64], quiet=True, **options))
    if out:
        _bench.write_report(doc, Path(out))
    return BenchResult.from_document(doc)


def convert(checkpoint: str | Path, out: str | Path, outtype: str = "f16", quant: str | None = None,
            **sparsek: Any) -> Path:
    """HF checkpoint -> GGUF (optionally quantized) with the given Sparse-K settings in its metadata."""
    return _convert.convert(str(checkpoint), Path(out), outtype=outtype, quant=quant, sparsek=sparsek or None)


def meta_show(model: str | Path) -> dict[str, Any]:
    return _meta.read(Path(model))


def meta_set(model: str | Path, out: str | Path, **values: Any) -> Path:
    return _meta.write(Path(model), Path(out), values)


def meta_clear(model: str | Path, out: str | Path) -> Path:
    return _meta.write(Path(model), Path(out), clear=True)
