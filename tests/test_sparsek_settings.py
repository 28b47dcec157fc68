"""The one Sparse-K settings type: validation, and each spelling it owns (flags, llama-bench, GGUF, C, labels)."""

from __future__ import annotations

import argparse
import importlib.util
from typing import Any

import pytest

from pysparsek import paths
from pysparsek.sparsek import settings
from pysparsek.sparsek.settings import FIELDS, SettingsError, SparsekSettings


@pytest.mark.parametrize(("values", "message"), [
    ({"top_k": -1}, "Sparse-K top_k must be an integer >= 0, got -1"),
    ({"sinks": 1.5}, "Sparse-K sinks must be an integer >= 0, got 1.5"),
    ({"window": True}, "Sparse-K window must be an integer >= 0, got True"),
    ({"mode": "diagonal"}, "unknown Sparse-K mode 'diagonal'; choose one of head, group, token"),
    ({"score_type": "q3"}, "unknown Sparse-K score_type 'q3'; choose one of none, f16, q8_0, q4_0"),
    ({"sparq_shared": 2}, "Sparse-K sparq_shared must be at most 1, got 2"),
])
def test_bad_values_are_refused_with_a_message(values: dict, message: str) -> None:
    with pytest.raises(SettingsError) as err:
        SparsekSettings(**values)
    assert str(err.value) == message


def test_unknown_names_are_refused() -> None:
    with pytest.raises(SettingsError, match="unknown Sparse-K setting topk"):
        SparsekSettings.from_mapping({"topk": 8})


def test_unset_fields_resolve_to_llama_cpp_defaults() -> None:
    s = SparsekSettings(top_k=64, sinks=4)
    assert s.given() == {"top_k": 64, "sinks": 4}
    assert s.resolved() == SparsekSettings(top_k=64, window=0, stride=0, sinks=4, mode="head", score_type="none",
                                           max_ubatch=0, sparq_r=0, sparq_shared=0)
    assert s.resolved(SparsekSettings.off().replace(mode="group")).mode == "group"


def test_flags_name_only_what_is_set() -> None:
    assert SparsekSettings(top_k=64, stride=16, mode="group").flags() == [
        "--sparsek-topk", "64", "--sparsek-stride", "16", "--sparsek-mode", "group"]
    assert SparsekSettings().flags() == []


def test_llama_bench_flags_sweep_each_field_and_name_every_one() -> None:
    flags = settings.bench_flags([SparsekSettings(top_k=0), SparsekSettings(top_k=64, stride=16, sinks=4),
                                  SparsekSettings(top_k=256, stride=16, sinks=4)])
    assert flags == ["-sk", "0,64,256", "-skw", "0", "-sks", "0,16", "-skn", "0,4", "-skm", "head", "-skst", "none",
                     "-skmu", "0", "-sksr", "0", "-sksq", "0"]
    assert {f.bench_flag for f in FIELDS} == set(flags[::2])


def test_llama_bench_records_read_back() -> None:
    s = SparsekSettings(top_k=64, window=8, stride=16, sinks=4, mode="token", score_type="q8_0", max_ubatch=1,
                        sparq_r=16, sparq_shared=1)
    record = {f.bench_field: getattr(s, f.name) for f in FIELDS}
    assert set(record) == {"sparsek_topk", "sparsek_window", "sparsek_stride", "sparsek_sinks", "sparsek_mode",
                           "sparsek_score_type", "sparsek_max_ubatch", "sparsek_sparq_r",
                           "sparsek_sparq_shared"}
    assert SparsekSettings.from_bench_record(record) == s


def test_c_struct_round_trip() -> None:
    s = SparsekSettings(top_k=64, window=8, stride=16, sinks=4, mode="group")
    assert SparsekSettings(**settings.from_c(settings.to_c(s))) == s.replace(score_type=None, max_ubatch=None,
                                                                             sparq_r=None, sparq_shared=None)
    assert settings.to_c(SparsekSettings(mode="token")).mode == 2   # llama_sparsek_mode / ggml_sparsek_mode value


def test_labels_leave_defaults_out() -> None:
    assert SparsekSettings.off().label == "dense"
    assert SparsekSettings(top_k=64).label == "K=64 head"
    assert SparsekSettings(top_k=64, mode="group", window=64, stride=16, sinks=4, score_type="q4_0",
                           max_ubatch=1).label == "K=64 group w=64 stride=16 sinks=4 q4_0 ub<=1"
    # SparQ's copy replaces the score type's, so the label names SparQ alone
    assert SparsekSettings(top_k=64, mode="group", score_type="q4_0", sparq_r=16).label == "K=64 group sparq r=16"


def test_sparq_r_is_one_field_with_every_spelling() -> None:
    """SparQ's component count (issue #21) was added as one Field: its flag, llama-bench flag, GGUF value, argparse
    option and C functions all come from it."""
    s = SparsekSettings(top_k=64, sparq_r=16)
    assert s.flags() == ["--sparsek-topk", "64", "--sparsek-sparq-r", "16"]
    assert s.gguf_values() == {"top_k": 64, "sparq_r": 16}
    assert settings.bench_flags([s])[-4:-2] == ["-sksr", "16"]
    p = argparse.ArgumentParser()
    settings.add_arguments(p)
    assert SparsekSettings.from_args(p.parse_args(["--sparq-r", "8"])) == SparsekSettings(sparq_r=8)
    with pytest.raises(SettingsError, match="sparq_r must be an integer >= 0"):
        SparsekSettings(sparq_r=-1)
    assert [f.c_api for f in settings.C_API_FIELDS] == ["max_ubatch", "sparq_r", "sparq_shared"]


def test_sparq_shared_is_one_field_with_every_spelling() -> None:
    """The setting added after the settings type (issue #24's check): sparq_shared came as one Field, the patches
    (0036-0038) and these tests; flags, llama-bench sweep and JSON field, GGUF value, argparse option, table label
    and C functions all come from it."""
    s = SparsekSettings(top_k=64, mode="group", sparq_r=16, sparq_shared=1)
    assert s.flags()[-4:] == ["--sparsek-sparq-r", "16", "--sparsek-sparq-shared", "1"]
    assert s.gguf_values()["sparq_shared"] == 1
    assert settings.bench_flags([s, s.replace(sparq_shared=0)])[-2:] == ["-sksq", "1,0"]
    assert SparsekSettings.from_bench_record({"sparsek_topk": 64, "sparsek_sparq_shared": 1}).sparq_shared == 1
    assert s.label == "K=64 group sparq r=16 shared=1"
    p = argparse.ArgumentParser()
    settings.add_arguments(p)
    assert SparsekSettings.from_args(p.parse_args(["--sparq-shared", "1"])) == SparsekSettings(sparq_shared=1)
    with pytest.raises(SystemExit):
        p.parse_args(["--sparq-shared", "2"])
    assert settings.BY_NAME["sparq_shared"].c_status


def test_argparse_group_parses_and_validates() -> None:
    p = argparse.ArgumentParser()
    settings.add_arguments(p)
    assert SparsekSettings.from_args(p.parse_args(["--topk", "8", "--mode", "group"])) == SparsekSettings(
        top_k=8, mode="group")
    assert SparsekSettings.from_args(p.parse_args([])) == SparsekSettings()
    with pytest.raises(SystemExit):
        p.parse_args(["--sinks", "-2"])
    p = argparse.ArgumentParser()
    settings.add_arguments(p, defaults=True)
    assert SparsekSettings.from_args(p.parse_args([])) == SparsekSettings.off()


def test_gguf_keys() -> None:
    assert settings.gguf_key("llama", "top_k") == "llama.attention.sparsek.top_k"
    assert SparsekSettings(top_k=8, mode="group").gguf_values() == {"top_k": 8, "mode": "group"}


def test_gguf_keys_are_the_patched_gguf_py_constants(patched_build: Any) -> None:
    """Every setting's GGUF key is the patched gguf-py's Keys.Attention.SparseK constant (its gguf-py patch), and
    gguf-py names no key the settings lack."""
    constants = paths.tree_dir("patched") / "gguf-py" / "gguf" / "constants.py"
    spec = importlib.util.spec_from_file_location("patched_gguf_constants", constants)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sparsek = module.Keys.Attention.SparseK
    names = {n for n in vars(sparsek) if n.isupper()}
    assert names == {f.name.upper() for f in FIELDS}
    for f in FIELDS:
        assert getattr(sparsek, f.name.upper()).format(arch="llama") == settings.gguf_key("llama", f.name)
