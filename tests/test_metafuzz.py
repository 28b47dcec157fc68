"""Bad Sparse-K metadata, fuzzed: every mutated file is refused with a message or loads exactly as documented.

Each load runs in a child process (`pysparsek.sparsek.load_probe`), so an abort, a crash or a hang is a failed
check here rather than the end of pytest. The suite runs a seeded sample (PYSPARSEK_FUZZ_CASES, default 40, about
a minute on 2 cores); `scripts/fuzz_metadata.py` runs 500 and more and writes results/metadata-fuzz.*.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import gguf
import pytest

from pysparsek.data import tiny_model
from pysparsek.measure import metafuzz
from pysparsek.measure.metafuzz import PREFIX, Case, Entry, Outcome
from pysparsek.sparsek import meta
from pysparsek.sparsek.settings import SparsekSettings

T = gguf.GGUFValueType
N_CASES = int(os.environ.get("PYSPARSEK_FUZZ_CASES", "40"))
FIRST_SEED = int(os.environ.get("PYSPARSEK_FUZZ_SEED", "0"))


def _case(*entries: tuple[str, gguf.GGUFValueType, object], head_dim: int = 32) -> Case:
    return Case(-1, head_dim, tuple(Entry(PREFIX + name, vtype, value) for name, vtype, value in entries))


# -- the rule, the generator and the reader (no build needed) -------------------------------------------------

def test_cases_are_reproducible_from_their_seed() -> None:
    assert metafuzz.generate(7) == metafuzz.generate(7)
    assert len({repr(metafuzz.generate(s)) for s in range(50)}) == 50


def test_the_sample_covers_both_outcomes_and_every_head_size() -> None:
    cases = [metafuzz.generate(s) for s in range(FIRST_SEED, FIRST_SEED + max(N_CASES, 40))]
    expected = [metafuzz.expect(c) for c in cases]
    assert sum(e.refused_by is None for e in expected) >= 5
    assert sum(e.refused_by is not None for e in expected) >= 5
    assert {c.head_dim for c in cases} == {16, 32, 48}
    # mutations meet Sparse-K running: K on with a score copy, and with the decode-only policy
    on = [e.settings for e in expected if e.settings is not None and e.settings.top_k]
    assert sum(s.score_type != "none" for s in on) >= 3 and sum(bool(s.max_ubatch) for s in on) >= 3


@pytest.mark.parametrize(("case", "refused_by"), [
    (_case(("top_k", T.UINT32, 64), ("mode", T.STRING, "group")), None),
    (_case(("top_k", T.INT32, 64)), "top_k"),
    (_case(("top_k", T.UINT32, 2**31)), "top_k"),
    (_case(("max_ubatch", T.UINT32, 2**32 - 1)), None),
    (_case(("mode", T.STRING, "token\x00")), None),    # llama.cpp reads strings up to a NUL (strict: refused)
    (_case(("mode", T.STRING, "\x00token")), "mode"),
    (_case(("mode", T.UINT32, 1)), "mode"),
    (_case(("score_type", T.STRING, "q4_0")), None),
    (_case(("score_type", T.STRING, "q4_0"), head_dim=48), "score_type"),
    (_case(("score_type", T.STRING, "f16"), head_dim=48), None),
    (_case(("topk", T.STRING, "anything")), None),     # not a Sparse-K key: ignored
    (_case(("sparq_shared", T.UINT32, 1)), None),
    (_case(("sparq_shared", T.UINT32, 2)), "sparq_shared"),  # a Field's maximum is the loader's bound
])
def test_the_rule(case: Case, refused_by: str | None) -> None:
    exp = metafuzz.expect(case)
    assert exp.refused_by == (PREFIX + refused_by if refused_by else None)
    has_nul = any("\x00" in str(e.value) for e in case.entries)
    assert (exp.strict_refused_by is not None) == (has_nul and not refused_by)
    if has_nul and not refused_by:
        assert exp.settings is not None and exp.settings.mode == "token"


@pytest.mark.parametrize(("entries", "head_dim", "message"), [
    ([("top_k", T.INT32, 8)], 32, "top_k has type INT32; Sparse-K stores it as UINT32"),
    ([("window", T.UINT32, 2**31)], 32, "window = 2147483648 is out of range"),
    ([("sparq_shared", T.UINT32, 2)], 32, "sparq_shared = 2 is out of range (at most 1)"),
    ([("mode", T.STRING, b"\xff\xfe")], 32, "mode is not valid UTF-8"),
    ([("mode", T.STRING, "group\x00")], 32, "mode contains a NUL byte"),
    ([("score_type", T.ARRAY, ("q4_0",))], 32, "score_type has type ARRAY"),
    ([("score_type", T.STRING, "q4_0")], 48, "needs a head size that is a multiple of 32; this model's is 48"),
])
def test_meta_read_refuses_what_llama_cpp_refuses(tmp_path: Path, entries: list, head_dim: int,
                                                  message: str) -> None:
    case = Case(-1, head_dim, tuple(Entry(PREFIX + n, t, v, T.STRING if t == T.ARRAY else None)
                                    for n, t, v in entries))
    path = metafuzz.write(case, tmp_path / "bad.gguf")
    with pytest.raises(meta.MetaError, match=re.escape(message)):
        meta.read(path)


def test_meta_set_refuses_a_score_type_the_head_size_cannot_take(tmp_path: Path) -> None:
    model = tiny_model.write(tmp_path / "h48.gguf", tiny_model.TinyShape(head_dim=48))
    with pytest.raises(meta.MetaError, match="multiple of 32"):
        meta.write(model, tmp_path / "out.gguf", SparsekSettings(top_k=8, score_type="q4_0"))
    meta.write(model, tmp_path / "ok.gguf", SparsekSettings(top_k=8, score_type="f16"))


def test_unknown_keys_under_the_prefix_are_listed(tmp_path: Path) -> None:
    path = metafuzz.write(_case(("topk", T.UINT32, 8), ("top_k", T.UINT32, 8)), tmp_path / "m.gguf")
    assert meta.unknown_keys(path) == [PREFIX + "topk"]


def test_probe_records_an_abort_and_a_hang_instead_of_dying(tmp_path: Path) -> None:
    path = tmp_path / "none.gguf"
    aborted = metafuzz.probe(path, command=[sys.executable, "-c", "import os; os.abort()"])
    assert aborted.kind == "crashed"
    hung = metafuzz.probe(path, timeout=1, command=[sys.executable, "-c", "import time; time.sleep(30)"])
    assert hung.kind == "hung"
    case = _case(("top_k", T.UINT32, 8))
    verdict = metafuzz.check(case, metafuzz.write(case, tmp_path / "m.gguf"), aborted)
    assert verdict.problems and "crashed" in verdict.problems[0]


def test_the_check_flags_a_loader_that_ignores_a_bad_key(tmp_path: Path) -> None:
    case = _case(("top_k", T.INT32, 8))
    loaded = Outcome("loaded", SparsekSettings.off())
    verdict = metafuzz.check(case, metafuzz.write(case, tmp_path / "m.gguf"), loaded)
    assert any("loaded the model although" in p for p in verdict.problems)


# -- the patched llama.cpp on fuzzed files ---------------------------------------------------------------------

@pytest.mark.build
def test_a_valid_file_loads_with_its_settings_and_a_bad_one_is_refused_with_the_key(patched_build,
                                                                                     tmp_path: Path) -> None:
    good = _case(("top_k", T.UINT32, 8), ("mode", T.STRING, "group"), ("score_type", T.STRING, "q4_0"),
                 ("window", T.UINT32, 2**31 - 1), ("sinks", T.UINT32, 2**31 - 1), ("max_ubatch", T.UINT32, 1))
    out = metafuzz.probe(metafuzz.write(good, tmp_path / "good.gguf"))
    assert out.kind == "loaded", out.message
    assert out.settings == metafuzz.expect(good).settings
    assert out.details["score_bytes"] > 0
    bad = _case(("top_k", T.INT32, 8))
    out = metafuzz.probe(metafuzz.write(bad, tmp_path / "bad.gguf"))
    assert out.kind == "refused"
    assert PREFIX + "top_k" in out.message and "wrong type" in out.message


@pytest.mark.build
def test_a_score_type_the_head_size_cannot_take_is_refused_with_a_message(patched_build, tmp_path: Path) -> None:
    case = _case(("top_k", T.UINT32, 8), ("score_type", T.STRING, "q4_0"), head_dim=48)
    out = metafuzz.probe(metafuzz.write(case, tmp_path / "h48.gguf"))
    assert out.kind == "refused", out.message
    assert "Sparse-K" in out.message


@pytest.mark.build
def test_fuzzed_metadata_is_refused_or_loaded_as_documented(patched_build, tmp_path: Path) -> None:
    verdicts = [metafuzz.run_case(seed, tmp_path) for seed in range(FIRST_SEED, FIRST_SEED + N_CASES)]
    kinds = {v.outcome.kind for v in verdicts}
    assert {"loaded", "refused"} <= kinds
    problems = [f"seed {v.case.seed}: {p}" for v in verdicts for p in v.problems]
    assert not problems, "\n".join(problems)
