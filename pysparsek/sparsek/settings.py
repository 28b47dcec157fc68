"""The Sparse-K settings: one type that owns their names, values, validation and every spelling of them.

A `SparsekSettings` is what the patched llama.cpp calls one Sparse-K setting. Each field is described once, in
`FIELDS`: its llama.cpp common flag (`--sparsek-*`, llama-perplexity, llama-server, ...), its llama-bench sweep
flag and JSON field, its GGUF key, its argparse option and its label in tables. Every other module holds a
`SparsekSettings` and asks it for those spellings, so a new setting is added here (and in the patch series).

A field left `None` is *unset*: the tools then keep what the model's GGUF metadata says (or off).
`resolved()` fills unset fields with llama.cpp's own defaults (Sparse-K off).
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pysparsek.errors import UserError

MODES = ("head", "group", "token")             # llama_sparsek_mode: 0, 1, 2 (ggml_sparsek_mode's values)
SCORE_TYPES = ("none", "f16", "q8_0", "q4_0")  # none: score from K itself (GGML_TYPE_COUNT in the C API)
INT32_MAX = 2**31 - 1   # the patched loader's bound on an integer setting unless the Field says otherwise
UINT32_MAX = 2**32 - 1


class SettingsError(UserError, ValueError):
    """A Sparse-K setting out of range or unknown."""


@dataclass(frozen=True)
class Field:
    """One Sparse-K setting and its spellings."""
    name: str              # Python, GGUF (`<arch>.attention.sparsek.<name>`), /props and llama-bench JSON suffix
    default: int | str     # llama.cpp's value when nothing sets it (off)
    flag: str              # llama.cpp common argument
    bench_flag: str        # llama-bench sweep flag
    option: str            # pysparsek's argparse option
    help: str
    label: str = ""        # short name in table labels ("w" -> "w=64"); "" = the value alone
    choices: tuple[str, ...] = ()  # for string settings
    # an integer setting with its own C functions: llama_set_sparsek_<c_api>(ctx, uint32_t) (returning int32_t 0 on
    # success when c_status, else void), llama_get_sparsek_<c_api>(ctx), llama_model_sparsek_<c_api>(model)
    c_api: str = ""
    c_status: bool = False
    maximum: int = INT32_MAX       # the largest value of an integer setting that llama.cpp takes

    @property
    def is_int(self) -> bool:
        return not self.choices

    @property
    def bench_field(self) -> str:
        """The key of this setting in llama-bench's JSON records."""
        return f"sparsek_{'topk' if self.name == 'top_k' else self.name}"

    def check(self, value: Any) -> None:
        if self.is_int:
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise SettingsError(f"Sparse-K {self.name} must be an integer >= 0, got {value!r}")
            if value > self.maximum:
                raise SettingsError(f"Sparse-K {self.name} must be at most {self.maximum}, got {value}")
        elif value not in self.choices:
            raise SettingsError(f"unknown Sparse-K {self.name} {value!r}; choose one of {', '.join(self.choices)}")

    def parse(self, text: str) -> int | str:
        """One value from text (argparse type): a clear message naming what is wrong."""
        if not self.is_int:
            if text not in self.choices:
                raise argparse.ArgumentTypeError(f"invalid choice {text!r} (choose from {', '.join(self.choices)})")
            return text
        try:
            value = int(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from exc
        if value < 0:
            raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
        if value > self.maximum:
            raise argparse.ArgumentTypeError(f"must be at most {self.maximum}, got {value}")
        return value


FIELDS: tuple[Field, ...] = (
    Field("top_k", 0, "--sparsek-topk", "-sk", "--topk", "keep the K highest scores per row (0 = off)"),
    Field("window", 0, "--sparsek-window", "-skw", "--window", "also keep the N most recent positions", "w"),
    Field("stride", 0, "--sparsek-stride", "-sks", "--stride", "also keep positions divisible by N", "stride"),
    Field("sinks", 0, "--sparsek-sinks", "-skn", "--sinks", "also keep the first N positions", "sinks"),
    Field("mode", "head", "--sparsek-mode", "-skm", "--mode", "which heads share one kept set: head (each query "
          "head), group (the query heads of one KV head), token (all heads)", choices=MODES),
    Field("score_type", "none", "--sparsek-score-type", "-skst", "--score-type", "choose the kept cells from a copy "
          "of K in this type that the KV cache keeps (q4_0 reads ~28%% of an f16 K's bytes); none = from K itself",
          choices=SCORE_TYPES),
    Field("max_ubatch", 0, "--sparsek-max-ubatch", "-skmu", "--max-ubatch", "apply Sparse-K only to ubatches of at "
          "most N tokens (1 = decoding only: prompts attend densely); 0 = every ubatch", "ub<=", c_api="max_ubatch",
          maximum=UINT32_MAX),
    Field("sparq_r", 0, "--sparsek-sparq-r", "-sksr", "--sparq-r", "SparQ scores: choose the kept cells from the N "
          "largest |q| components of each query head and a channel-major copy of K (replaces the score type's copy; "
          "reads N of the head size's channels of K); 0 = off", "sparq r=", c_api="sparq_r", c_status=True),
    Field("sparq_shared", 0, "--sparsek-sparq-shared", "-sksq", "--sparq-shared", "SparQ in group and token mode: "
          "1 = the query heads of a KV head share the components where the sum of their |q| is largest (reads fewer "
          "channels of K, chooses worse); 0 = each query head its own", "shared=", c_api="sparq_shared",
          c_status=True, maximum=1),
)
BY_NAME: dict[str, Field] = {f.name: f for f in FIELDS}


@dataclass(frozen=True)
class SparsekSettings:
    """One Sparse-K setting; None = unset (the model's metadata, else off)."""
    top_k: int | None = None
    window: int | None = None
    stride: int | None = None
    sinks: int | None = None
    mode: str | None = None
    score_type: str | None = None
    max_ubatch: int | None = None
    sparq_r: int | None = None
    sparq_shared: int | None = None

    def __post_init__(self) -> None:
        for f in FIELDS:
            value = getattr(self, f.name)
            if value is not None:
                f.check(value)

    # -- construction ------------------------------------------------------------------------------------------

    @classmethod
    def off(cls) -> SparsekSettings:
        """Every field at llama.cpp's default: Sparse-K off."""
        return cls(**{f.name: f.default for f in FIELDS})

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> SparsekSettings:
        """From {name: value} (GGUF metadata, JSON); unknown names are an error."""
        unknown = set(values) - set(BY_NAME)
        if unknown:
            raise SettingsError(f"unknown Sparse-K setting {', '.join(sorted(unknown))}; known: {', '.join(BY_NAME)}")
        return cls(**dict(values))

    @classmethod
    def from_args(cls, args: argparse.Namespace, *, skip: Iterable[str] = ()) -> SparsekSettings:
        """The settings given on a command line built with add_arguments()."""
        return cls(**{f.name: getattr(args, f.name) for f in FIELDS if f.name not in skip})

    @classmethod
    def from_bench_record(cls, record: Mapping[str, Any]) -> SparsekSettings:
        """What a llama-bench JSON record says ran (fields it does not report stay at their default)."""
        return cls(**{f.name: (int(record.get(f.bench_field, f.default)) if f.is_int
                               else str(record.get(f.bench_field, f.default))) for f in FIELDS})

    def replace(self, **changes: Any) -> SparsekSettings:
        return dataclasses.replace(self, **changes)

    # -- views -------------------------------------------------------------------------------------------------

    def given(self) -> dict[str, int | str]:
        """The fields that are set, by name."""
        return {f.name: getattr(self, f.name) for f in FIELDS if getattr(self, f.name) is not None}

    def resolved(self, base: SparsekSettings | None = None) -> SparsekSettings:
        """Unset fields taken from base (default: off)."""
        base = base or SparsekSettings.off()
        return dataclasses.replace(base, **self.given())

    @property
    def enabled(self) -> bool:
        return bool(self.top_k)

    @property
    def label(self) -> str:
        """Short name in tables: "dense", or "K=64 group w=64 sinks=4 q4_0 ub<=1" (defaults left out)."""
        r = self.resolved()
        return ("dense" if not r.top_k else f"K={r.top_k} {r.details()}") + (
            f" {r.score_type}" if not r.top_k and r.score_type != "none" else "")

    def details(self) -> str:
        """Every field but top_k, as in label: the mode, then the others that differ from their default."""
        r = self.resolved()
        parts = [str(r.mode)]
        for f in FIELDS:
            value = getattr(r, f.name)
            if f.name in ("top_k", "mode") or value == f.default or (f.name == "score_type" and r.sparq_r):
                continue  # SparQ's copy replaces the score type's
            parts.append(f"{f.label}{value}" if not f.label or f.label.endswith("=") else f"{f.label}={value}")
        return " ".join(parts)

    # -- llama.cpp ---------------------------------------------------------------------------------------------

    def flags(self) -> list[str]:
        """llama.cpp common arguments (llama-perplexity, llama-server, ...) for the fields that are set."""
        out: list[str] = []
        for name, value in self.given().items():
            out += [BY_NAME[name].flag, str(value)]
        return out

    def gguf_values(self) -> dict[str, int | str]:
        """The fields that are set, as stored in GGUF (`<arch>.attention.sparsek.<name>`)."""
        return self.given()


def gguf_key(arch: str, name: str) -> str:
    """The GGUF key of a setting; the patched gguf-py names it `Keys.Attention.SparseK.<NAME>` (tests check that
    the two agree: pysparsek writes metadata with PyPI's gguf, which does not have those constants)."""
    return f"{arch}.attention.sparsek.{name}"


def bench_flags(settings: Iterable[SparsekSettings]) -> list[str]:
    """llama-bench arguments sweeping every value the settings take, field by field (llama-bench runs the cross
    product; every field is passed explicitly, so a run never takes a value from the model's metadata)."""
    resolved = [s.resolved() for s in settings]
    out: list[str] = []
    for f in FIELDS:
        values: list[str] = []
        for s in resolved:
            v = str(getattr(s, f.name))
            if v not in values:
                values.append(v)
        out += [f.bench_flag, ",".join(values)]
    return out


def add_arguments(parser: argparse.ArgumentParser, *, defaults: bool = False, skip: Iterable[str] = (),
                  helps: Mapping[str, str] | None = None) -> argparse._ArgumentGroup:
    """The Sparse-K options as one argparse group; unset (None) unless `defaults`, then llama.cpp's defaults."""
    group = parser.add_argument_group("Sparse-K")
    helps = helps or {}
    for f in FIELDS:
        if f.name in skip:
            continue
        kw: dict[str, Any] = {"dest": f.name, "type": f.parse, "help": helps.get(f.name, f.help)}
        if f.choices:
            kw["metavar"] = "|".join(f.choices)
        if defaults:
            kw["default"] = f.default
            kw["help"] += f" (default: {f.default})"
        group.add_argument(f.option, **kw)
    return group


# -- C API: struct llama_sparsek_params in the patched llama.h ---------------------------------------------------

class CParams(ctypes.Structure):
    _fields_ = [("top_k", ctypes.c_int32), ("window", ctypes.c_int32), ("stride", ctypes.c_int32),
                ("sinks", ctypes.c_int32), ("mode", ctypes.c_int)]


C_FIELDS = tuple(name for name, _ in CParams._fields_)  # the rest have their own setters (score type, c_api fields)
C_API_FIELDS = tuple(f for f in FIELDS if f.c_api)


def to_c(s: SparsekSettings) -> CParams:
    r = s.resolved()
    return CParams(r.top_k, r.window, r.stride, r.sinks, MODES.index(r.mode))


def from_c(p: CParams) -> dict[str, int | str]:
    if not 0 <= p.mode < len(MODES):
        raise SettingsError(f"the library reported an unknown Sparse-K mode {p.mode}")
    return {"top_k": p.top_k, "window": p.window, "stride": p.stride, "sinks": p.sinks, "mode": MODES[p.mode]}
