"""What `bench` measures, as types, and their JSON form (results.json, schema `pysparsek.bench/2`).

The measuring code builds these objects, the reports read them, and `to_json`/`from_json` are the only places
that know the JSON layout.
"""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pysparsek.sparsek.settings import FIELDS, SparsekSettings

SCHEMA = "pysparsek.bench/2"

# the steadiness a setting's speed is held to: max/min over its processes (issue #23)
STEADY_SPREAD = 1.10


@dataclass
class BenchOptions:
    """Everything a bench run is asked to do; `sparsek` is the setting measured at each K of `topks`."""
    model: Path
    text: Path
    topks: list[int]
    sparsek: SparsekSettings = field(default_factory=SparsekSettings.off)  # its top_k is ignored
    ctx: int = 512
    chunks: int = 8
    threads: int | None = None
    ngl: int = 0
    flash_attn: bool = True
    batch: int = 2048
    ubatch: int = 512
    depths: list[int] = field(default_factory=lambda: [0, 8192])
    n_prompt: int = 512
    n_gen: int = 32
    reps: int = 2
    processes: int = 3           # separate llama-bench processes per setting (speed)
    backend: str = "cpu"
    quiet: bool = False
    skip_speed: bool = False
    regime: str = "prompt"       # quality: prompt (llama-perplexity) or decode (dense prompt, then decoded tokens)
    prompt_tokens: int = 1024    # decode regime: dense prompt per chunk
    decode_tokens: int = 256     # decode regime: tokens decoded one at a time per chunk
    rpc: str = ""                # HOST:PORT[,...]: the patched runs put their layers on these ggml-rpc-servers
    cache_types: list[str] = field(default_factory=list)  # dense with these quantized K/V caches, for comparison
    cache_depths: list[int] | None = None   # depths of the quantized caches' speed runs (None: `depths`)

    def __post_init__(self) -> None:
        self.sparsek = self.sparsek.resolved().replace(top_k=None)

    def at(self, top_k: int) -> SparsekSettings:
        """The setting measured at one K."""
        return self.sparsek.replace(top_k=top_k)

    def to_json(self) -> dict[str, Any]:
        """Flat: the Sparse-K fields (but top_k) next to the other options."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "sparsek":
                out.update(value.given())
            else:
                out[f.name] = str(value) if isinstance(value, Path) else value
        return out

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> BenchOptions:
        names = {f.name for f in dataclasses.fields(cls)} - {"sparsek"}
        values = {k: v for k, v in doc.items() if k in names}
        values["model"], values["text"] = Path(values["model"]), Path(values["text"])
        sparsek = SparsekSettings(**{f.name: doc[f.name] for f in FIELDS if f.name != "top_k" and f.name in doc})
        return cls(sparsek=sparsek, **values)


@dataclass(frozen=True)
class Perplexity:
    ppl: float
    ppl_stderr: float | None
    chunks: list[float]
    decoded_tokens: int | None = None   # decode regime


@dataclass(frozen=True)
class QualityRow:
    top_k: int
    ppl: float
    ppl_stderr: float | None
    delta_ppl_pct: float
    kl_mean: float | None
    kl_stderr: float | None
    top1_agreement_pct: float | None
    score_type: str | None = None       # decode regime
    cache_type: str = "f16"             # K/V cache type; a row with top_k 0 is dense with a quantized cache

    @property
    def label(self) -> str:
        return (str(self.top_k) if self.top_k else "dense") + ("" if self.cache_type == "f16"
                                                               else f" {self.cache_type} cache")


@dataclass(frozen=True)
class Quality:
    stock: Perplexity
    patched_off: Perplexity
    identical: bool          # stock == patched with Sparse-K off
    sparse: list[QualityRow]
    regime: str = "prompt"

    @property
    def dense_ppl(self) -> float:
        return self.stock.ppl

    def to_json(self) -> dict[str, Any]:
        def ppl(p: Perplexity) -> dict[str, Any]:
            d = dataclasses.asdict(p)
            if p.decoded_tokens is None:
                del d["decoded_tokens"]
            return d

        def row(r: QualityRow) -> dict[str, Any]:
            d = dataclasses.asdict(r)
            if r.score_type is None:
                del d["score_type"]
            if r.cache_type == "f16":
                del d["cache_type"]
            return d

        out: dict[str, Any] = {"regime": self.regime} if self.regime != "prompt" else {}
        return {**out, "stock": ppl(self.stock), "patched_off": ppl(self.patched_off), "identical": self.identical,
                "sparse": [row(r) for r in self.sparse]}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Quality:
        return cls(Perplexity(**doc["stock"]), Perplexity(**doc["patched_off"]), doc["identical"],
                   [QualityRow(**r) for r in doc["sparse"]], doc.get("regime", "prompt"))


@dataclass(frozen=True)
class Rate:
    """One setting's tokens/s at one test and depth: one value per llama-bench process (that process's mean over
    its repetitions). A setting can be fast in some processes and slow in others (issue #23), so a rate is its
    samples, their median and their spread, never one number alone."""
    samples: tuple[float, ...]
    loads: tuple[float | None, ...] = ()   # the 1-minute load average as each process started, where recorded

    def __post_init__(self) -> None:
        if not self.samples or min(self.samples) <= 0:
            raise ValueError(f"a rate needs positive samples, got {self.samples!r}")
        if self.loads and len(self.loads) != len(self.samples):
            raise ValueError(f"{len(self.loads)} load values for {len(self.samples)} samples")
        object.__setattr__(self, "samples", tuple(float(v) for v in self.samples))
        object.__setattr__(self, "loads", tuple(self.loads))

    @property
    def processes(self) -> int:
        return len(self.samples)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def low(self) -> float:
        return min(self.samples)

    @property
    def high(self) -> float:
        return max(self.samples)

    @property
    def spread(self) -> float:
        """max / min over the processes (1.0 = every process measured the same)."""
        return self.high / self.low

    @property
    def steady(self) -> bool:
        return self.spread <= STEADY_SPREAD

    def to_json(self, prefix: str = "") -> dict[str, Any]:
        """`tokens_per_s` (the median), its min and max, the spread and the samples, under `prefix`."""
        return {f"{prefix}tokens_per_s": self.median, f"{prefix}tokens_per_s_min": self.low,
                f"{prefix}tokens_per_s_max": self.high, f"{prefix}spread": self.spread,
                f"{prefix}samples_ts": list(self.samples), f"{prefix}load_1min": list(self.loads)}

    @classmethod
    def from_json(cls, doc: dict[str, Any], prefix: str = "") -> Rate:
        return cls(tuple(doc[f"{prefix}samples_ts"]), tuple(doc.get(f"{prefix}load_1min", ())))


@dataclass(frozen=True)
class DenseSpeed:
    test: str            # "pp512" or "tg32"
    depth: int
    rate: Rate

    @property
    def tokens_per_s(self) -> float:
        return self.rate.median

    def to_json(self) -> dict[str, Any]:
        return {"test": self.test, "depth": self.depth, **self.rate.to_json()}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> DenseSpeed:
        return cls(doc["test"], doc["depth"], Rate.from_json(doc))


@dataclass(frozen=True)
class SpeedRow:
    settings: SparsekSettings   # every field set
    test: str
    depth: int
    rate: Rate                  # this setting, one sample per process round
    dense: Rate                 # dense (f16 cache) in the same rounds, same order
    cache_type: str = "f16"     # K/V cache type; a row with top_k 0 is dense with a quantized cache

    def __post_init__(self) -> None:
        if self.rate.processes != self.dense.processes:
            raise ValueError(f"{self.rate.processes} samples of {self.label} against {self.dense.processes} dense ones")

    @property
    def top_k(self) -> int:
        return int(self.settings.top_k or 0)

    @property
    def label(self) -> str:
        return self.settings.label + ("" if self.cache_type == "f16" else f", {self.cache_type} cache")

    @property
    def tokens_per_s(self) -> float:
        return self.rate.median

    @property
    def dense_tokens_per_s(self) -> float:
        return self.dense.median

    @property
    def ratios(self) -> list[float]:
        """This row's t/s / dense t/s of the same round, per round."""
        return [s / d for s, d in zip(self.rate.samples, self.dense.samples, strict=True)]

    @property
    def ratio(self) -> float:
        """Median of the same-round ratios (drift between rounds hits both sides of each)."""
        return statistics.median(self.ratios)

    @property
    def ratio_min(self) -> float:
        return min(self.ratios)

    @property
    def ratio_max(self) -> float:
        return max(self.ratios)

    def to_json(self) -> dict[str, Any]:
        return {**self.settings.given(), "test": self.test, "depth": self.depth, **self.rate.to_json(),
                **self.dense.to_json("dense_"), "ratio": self.ratio, "ratio_min": self.ratio_min,
                "ratio_max": self.ratio_max, "cache_type": self.cache_type}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> SpeedRow:
        names = {f.name for f in FIELDS}
        settings = SparsekSettings(**{k: v for k, v in doc.items() if k in names}).resolved()
        return cls(settings, doc["test"], doc["depth"], Rate.from_json(doc), Rate.from_json(doc, "dense_"),
                   doc.get("cache_type", "f16"))


@dataclass(frozen=True)
class Speed:
    dense: list[DenseSpeed] = field(default_factory=list)
    sparse: list[SpeedRow] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"dense": [d.to_json() for d in self.dense], "sparse": [r.to_json() for r in self.sparse]}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Speed:
        return cls([DenseSpeed.from_json(d) for d in doc["dense"]], [SpeedRow.from_json(r) for r in doc["sparse"]])


@dataclass(frozen=True)
class ScoreCopy:
    """Measured size of the Sparse-K score copy of K."""
    score_type: str
    n_ctx: int
    bytes: int
    k_f16_bytes: int
    fraction_of_k_f16: float


@dataclass(frozen=True)
class BenchResult:
    created: str
    pysparsek_version: str
    machine: dict[str, Any]
    backend: str
    llama_cpp_pin: str
    patch_series_sha256: str
    model: dict[str, Any]        # path, sha256, size_bytes
    text: dict[str, Any]         # path, sha256
    options: BenchOptions
    score_copy: ScoreCopy | None
    quality: Quality
    speed: Speed
    llama_bench_records: list[dict[str, Any]]  # raw llama-bench JSON, as printed

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "created": self.created,
            "pysparsek_version": self.pysparsek_version,
            "machine": self.machine,
            "backend": self.backend,
            "llama_cpp_pin": self.llama_cpp_pin,
            "patch_series_sha256": self.patch_series_sha256,
            "model": self.model,
            "text": self.text,
            "options": self.options.to_json(),
            "score_copy": dataclasses.asdict(self.score_copy) if self.score_copy else None,
            "quality": self.quality.to_json(),
            "speed": self.speed.to_json(),
            "llama_bench_records": self.llama_bench_records,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> BenchResult:
        if doc.get("schema") != SCHEMA:
            raise ValueError(f"not a {SCHEMA} document (schema {doc.get('schema')!r})")
        return cls(doc["created"], doc["pysparsek_version"], doc["machine"], doc["backend"], doc["llama_cpp_pin"],
                   doc["patch_series_sha256"], doc["model"], doc["text"], BenchOptions.from_json(doc["options"]),
                   ScoreCopy(**doc["score_copy"]) if doc.get("score_copy") else None,
                   Quality.from_json(doc["quality"]), Speed.from_json(doc["speed"]), doc["llama_bench_records"])
