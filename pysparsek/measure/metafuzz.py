"""Fuzzing the Sparse-K GGUF keys: seeded cases of mutated metadata, what loading them must do, and the check.

A `Case` is a tiny random-weight model (`pysparsek.data.tiny_model`, head size 32, 48 or 16) plus, half the time, a
working Sparse-K setting (small K), and 1-4 mutated keys under `<arch>.attention.sparsek.` (or near it: another
architecture, an unknown or misspelled name) with any GGUF value type and edge values (0, 1, block-sized, INT32_MAX,
UINT32_MAX, 2^64-1, negative, NaN, unknown strings, strings with a NUL or invalid UTF-8, arrays). `expect` states,
independently of the loader, what the documented rule says (README "Settings"): the int keys are uint32 at most
their Field's maximum (INT32_MAX; max_ubatch UINT32_MAX; sparq_shared 1), mode and score_type are exactly one of
their names, a quantized score type needs a head size that is a multiple of 32; anything else under the prefix is
not a Sparse-K key and is ignored. Then a model either loads with exactly those settings or is refused with a
message. One known exception: llama.cpp reads every GGUF string only up to its first NUL byte (gguf_get_val_str
returns a C string; stock does this for all keys), so "group\0x" loads as "group"; pysparsek's reader refuses such a
string (`Expected.strict_refused_by`).

`probe` loads one file in a child process (`python -m pysparsek.sparsek.load_probe`), so an abort, a crash or a hang
is recorded rather than taking the caller down; `check` compares its outcome, and `meta.read`'s, with the
expectation.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf

from pysparsek.data import tiny_model
from pysparsek.sparsek.settings import BY_NAME, FIELDS, INT32_MAX, MODES, SCORE_TYPES, UINT32_MAX, SparsekSettings

T = gguf.GGUFValueType
PREFIX = f"{tiny_model.ARCH}.attention.sparsek."
HEAD_DIMS = (32, 32, 48, 16)   # 48 and 16 are not multiples of a quantized type's block (32)
INT_EDGES = (0, 1, 2, 3, 4, 8, 16, 31, 32, 33, 63, 64, 255, 256, 4096, 65535, INT32_MAX - 1, INT32_MAX, 2**31,
             UINT32_MAX - 1, UINT32_MAX)
STRING_EDGES: tuple[str | bytes, ...] = (
    "", "head", "group", "token", "none", "f16", "q8_0", "q4_0", "q4_1", "bf16", "f32", "HEAD", "Group", " group",
    "group ", "group\x00", "group\x00token", "q4_0\x00", "x" * 5000, "gröup", b"\xff\xfe", b"gr\xc3", "64", "-1",
)
OTHER_NAMES = ("topk", "top-k", "TOP_K", "unknown", "window.extra", "mode2", "")
OTHER_PREFIXES = ("gemma2.attention.sparsek.", "llama.attention.sparse.", "llama.sparsek.")
TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Entry:
    """One key written into the file."""
    key: str
    vtype: gguf.GGUFValueType
    value: Any
    sub_type: gguf.GGUFValueType | None = None

    def to_json(self) -> dict[str, Any]:
        value = self.value
        if isinstance(value, bytes):
            value = {"bytes": value.hex()}
        elif isinstance(value, float) and not math.isfinite(value):
            value = repr(value)
        elif isinstance(value, str) and len(value) > 64:
            value = f"{value[:16]}...({len(value)} chars)"
        return {"key": self.key, "type": self.vtype.name, "value": value,
                **({"sub_type": self.sub_type.name} if self.sub_type is not None else {})}


@dataclass(frozen=True)
class Case:
    seed: int
    head_dim: int
    entries: tuple[Entry, ...]

    def to_json(self) -> dict[str, Any]:
        return {"seed": self.seed, "head_dim": self.head_dim, "entries": [e.to_json() for e in self.entries]}


@dataclass(frozen=True)
class Expected:
    """Refused (with the key that is why), or loaded with these settings in the model (every field resolved)."""
    refused_by: str | None
    settings: SparsekSettings | None = None
    strict_refused_by: str | None = None   # a string with a NUL: llama.cpp loads its head, meta.read refuses it


def _value(rng: random.Random, name: str) -> tuple[gguf.GGUFValueType, Any, gguf.GGUFValueType | None]:
    """A value for a key: mostly of the key's own type (edge values), else of any other type."""
    f = BY_NAME.get(name)
    own = T.UINT32 if f is None or f.is_int else T.STRING
    vtype = own if rng.random() < 0.7 else rng.choice([t for t in T if t != own])
    if vtype == T.STRING:
        choices: list[str | bytes] = list(STRING_EDGES) + (list(f.choices) * 8 if f and f.choices else [])
        return vtype, rng.choice(choices), None
    if vtype == T.ARRAY:
        sub = rng.choice([T.UINT32, T.STRING, T.INT32])
        items = {T.UINT32: [8, 16], T.STRING: ["group"], T.INT32: [-1]}[sub]
        return vtype, tuple(items[: rng.randint(1, len(items))]), sub
    if vtype == T.BOOL:
        return vtype, rng.random() < 0.5, None
    if vtype in (T.FLOAT32, T.FLOAT64):
        return vtype, rng.choice([0.0, 8.0, 64.5, -1.0, float("nan"), float("inf"), -float("inf"), 1e30]), None
    bits = {T.UINT8: 8, T.INT8: 8, T.UINT16: 16, T.INT16: 16, T.UINT32: 32, T.INT32: 32, T.UINT64: 64,
            T.INT64: 64}[vtype]
    signed = vtype in (T.INT8, T.INT16, T.INT32, T.INT64)
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    edges = [v for v in (*INT_EDGES, -1, -2, lo, hi, 2**40) if lo <= v <= hi]
    return vtype, rng.choice(edges), None


def _working(rng: random.Random) -> dict[str, Entry]:
    """A valid setting with Sparse-K on (small K, any mode, score type and policy), for mutations to start from."""
    values: dict[str, tuple[gguf.GGUFValueType, Any]] = {
        "top_k": (T.UINT32, rng.choice([1, 2, 4, 8, 16, 32, 64])),
        "mode": (T.STRING, rng.choice(MODES)),
        "score_type": (T.STRING, rng.choice(SCORE_TYPES)),
        "window": (T.UINT32, rng.choice([0, 4, 64])),
        "sinks": (T.UINT32, rng.choice([0, 4])),
        "max_ubatch": (T.UINT32, rng.choice([0, 1, 8])),
    }
    return {PREFIX + n: Entry(PREFIX + n, t, v) for n, (t, v) in values.items()}


def generate(seed: int) -> Case:
    """One case from its seed (the same seed gives the same case everywhere): half the time a working setting
    with 1-3 keys mutated, else 1-4 mutated keys alone."""
    rng = random.Random(seed)
    entries: dict[str, Entry] = _working(rng) if rng.random() < 0.5 else {}
    for _ in range(rng.randint(1, 3 if entries else 4)):
        roll = rng.random()
        if roll < 0.8:
            name, key = (n := rng.choice([f.name for f in FIELDS])), PREFIX + n
        elif roll < 0.9:
            name = rng.choice(OTHER_NAMES)
            key = PREFIX + name
        else:
            name = rng.choice([f.name for f in FIELDS])
            key = rng.choice(OTHER_PREFIXES) + name
        vtype, value, sub = _value(rng, name)
        entries[key] = Entry(key, vtype, value, sub)
    return Case(seed, rng.choice(HEAD_DIMS), tuple(entries.values()))


def expect(case: Case) -> Expected:
    """What the documented rule says loading this file must do."""
    given: dict[str, int | str] = {}
    strict: str | None = None
    for e in case.entries:
        name = e.key[len(PREFIX):] if e.key.startswith(PREFIX) else None
        f = BY_NAME.get(name or "")
        if f is None:
            continue  # not a Sparse-K key: ignored
        if f.is_int:
            if e.vtype != T.UINT32 or e.value > f.maximum:
                return Expected(e.key)
            given[f.name] = int(e.value)
        else:
            raw = e.value.encode() if isinstance(e.value, str) else e.value
            head = raw.split(b"\0", 1)[0].decode(errors="replace") if e.vtype == T.STRING else None
            if head is None or head not in f.choices:
                return Expected(e.key)
            if head != e.value:
                strict = strict or e.key
            given[f.name] = head
    if given.get("score_type") in ("q8_0", "q4_0") and case.head_dim % 32:
        return Expected(PREFIX + "score_type")
    return Expected(None, SparsekSettings(**given).resolved(), strict)


def write(case: Case, dst: Path) -> Path:
    shape = tiny_model.TinyShape(head_dim=case.head_dim)
    w = tiny_model.writer(dst, shape)
    for e in case.entries:
        w.add_key_value(e.key, e.value, e.vtype, sub_type=e.sub_type)
    tiny_model.finish(w, tiny_model.tensors(shape))
    return dst


@dataclass
class Outcome:
    """What loading one file did in a child process."""
    kind: str                       # loaded | refused | crashed | hung | failed (exited otherwise)
    settings: SparsekSettings | None = None
    message: str = ""               # the loader's error lines (refused), or the tail of the output
    returncode: int | None = None
    details: dict[str, Any] = field(default_factory=dict)


def _error_lines(stderr: str) -> str:
    keep = [line.strip() for line in stderr.splitlines()
            if any(w in line.lower() for w in ("error", "sparse-k", "sparsek", "failed", "wrong type", "unknown"))]
    return "\n".join(keep[-8:])


def probe(path: Path, timeout: float = TIMEOUT_S, command: list[str] | None = None) -> Outcome:
    """Load the file with the patched library (metadata only: no Sparse-K setting is passed) and decode a few
    tokens, in a child process; glibc's heap checks are on (MALLOC_CHECK_=3, MALLOC_PERTURB_). `command`
    replaces the child's command line (to test this function)."""
    env = {**os.environ, "MALLOC_CHECK_": "3", "MALLOC_PERTURB_": "165"}
    cmd = command or [sys.executable, "-m", "pysparsek.sparsek.load_probe", str(path)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=timeout, env=env,
                              check=False)
    except subprocess.TimeoutExpired as exc:
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        return Outcome("hung", message=err[-2000:])
    rc = proc.returncode
    report = next((line[len("PROBE "):] for line in proc.stdout.splitlines() if line.startswith("PROBE ")), None)
    doc = json.loads(report) if report else {}
    if rc < 0 or rc == 128 + signal.SIGABRT:
        return Outcome("crashed", message=proc.stderr[-2000:], returncode=rc)
    if rc == 0 and "model" in doc:
        return Outcome("loaded", SparsekSettings(**doc["model"]), returncode=rc, details=doc)
    if rc == 3 and "refused" in doc:
        return Outcome("refused", message=_error_lines(proc.stderr) or doc["refused"], returncode=rc, details=doc)
    return Outcome("failed", message=(proc.stdout + proc.stderr)[-2000:], returncode=rc, details=doc)


@dataclass
class Verdict:
    case: Case
    expected: Expected
    outcome: Outcome
    python: str                     # what meta.read did: "ok", or the exception's text
    problems: list[str]
    python_kind: str = "ok"         # ok | MetaError | the name of any other exception

    def to_json(self) -> dict[str, Any]:
        return {"case": self.case.to_json(), "expected": {"refused_by": self.expected.refused_by,
                                                          "settings": self.expected.settings.given()
                                                          if self.expected.settings else None},
                "outcome": {"kind": self.outcome.kind, "returncode": self.outcome.returncode,
                            "settings": self.outcome.settings.given() if self.outcome.settings else None,
                            "message": self.outcome.message},
                "python": self.python, "python_kind": self.python_kind, "problems": self.problems}


def check(case: Case, path: Path, outcome: Outcome) -> Verdict:
    """Every way the load and the Python reader may disagree with the rule, as text (none = as documented)."""
    from pysparsek.sparsek import meta

    exp = expect(case)
    problems: list[str] = []
    if outcome.kind in ("crashed", "hung", "failed"):
        problems.append(f"llama.cpp {outcome.kind} (exit {outcome.returncode}): {outcome.message[-300:]}")
    elif exp.refused_by and outcome.kind == "loaded":
        problems.append(f"llama.cpp loaded the model although {exp.refused_by} is invalid "
                        f"(its settings: {outcome.settings})")
    elif not exp.refused_by and outcome.kind == "refused":
        problems.append(f"llama.cpp refused a valid file: {outcome.message}")
    elif outcome.kind == "loaded" and outcome.settings != exp.settings:
        problems.append(f"llama.cpp loaded {outcome.settings}, the metadata says {exp.settings}")
    elif outcome.kind == "refused" and not any(w in outcome.message for w in ("sparsek", "Sparse-K")):
        problems.append(f"the refusal does not name Sparse-K or the key: {outcome.message!r}")
    kind = "ok"
    try:
        read = meta.read(path)
        python = "ok"
        if exp.refused_by or exp.strict_refused_by:
            problems.append(f"meta.read accepted the file although {exp.refused_by or exp.strict_refused_by} is "
                            "invalid")
        elif exp.settings is not None and read.resolved() != exp.settings:
            problems.append(f"meta.read returned {read}, the metadata says {exp.settings}")
    except meta.MetaError as exc:
        python, kind = str(exc), "MetaError"
        if not (exp.refused_by or exp.strict_refused_by):
            problems.append(f"meta.read refused a valid file: {exc}")
    except Exception as exc:
        python, kind = f"{type(exc).__name__}: {exc}", type(exc).__name__
        problems.append(f"meta.read raised {type(exc).__name__} instead of a MetaError: {exc}")
    return Verdict(case, exp, outcome, python, problems, kind)


def run_case(seed: int, workdir: Path, timeout: float = TIMEOUT_S) -> Verdict:
    case = generate(seed)
    path = write(case, workdir / f"fuzz-{seed}.gguf")
    try:
        return check(case, path, probe(path, timeout))
    finally:
        path.unlink(missing_ok=True)
