"""The command line: help that lists the commands, one-line errors with a non-zero exit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pysparsek.cli import main as cli
from pysparsek.sparsek.settings import SparsekSettings


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pysparsek", *args], capture_output=True, text=True, check=False)


def test_help_lists_subcommands() -> None:
    out = _run("--help").stdout
    for name in ("source", "check-patches", "patch-tree", "refresh-patches", "build", "doctor", "compare"):
        assert name in out


@pytest.mark.parametrize("value", ["0", "-4", "abc", "16,,x"])
def test_bad_topk_is_rejected(value: str) -> None:
    proc = _run("compare", "--topk", value)
    assert proc.returncode == 2
    assert "--topk" in proc.stderr


def test_topk_list_is_parsed() -> None:
    args = cli.build_parser().parse_args(["compare", "--topk", "32,64,256"])
    assert args.topk == [32, 64, 256]


def test_missing_model_is_one_clear_line(tmp_path: Path) -> None:
    proc = _run("compare", str(tmp_path / "nope.gguf"))
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"pysparsek: error: model file not found: {tmp_path / 'nope.gguf'}"


def test_non_gguf_model_is_rejected(tmp_path: Path) -> None:
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"PK\x03\x04 not a model")
    proc = _run("compare", str(fake))
    assert proc.returncode == 2
    assert "is not a GGUF file" in proc.stderr


def test_doctor_reports_the_pin() -> None:
    proc = _run("doctor")
    assert proc.returncode == 0
    assert "0c1e57098bba43ac29e6e3b677cdceebdd22334f" in proc.stdout
    assert "ccache" in proc.stdout


# -- bench's options (the flags follow llama.cpp's names) -------------------------------------------------------

def test_bench_defaults_follow_llama_cpp_names() -> None:
    args = cli.build_parser().parse_args(["bench", "m.gguf", "--topk", "32,64", "-c", "1024", "-t", "2", "-ngl", "99",
                                          "-fa", "off", "-b", "512", "-ub", "128", "--depths", "0,2048,8192"])
    o = cli.bench_options(args, Path("m.gguf"), Path("t.txt"))
    assert (o.topks, o.ctx, o.threads, o.ngl, o.flash_attn, o.batch, o.ubatch) == ([32, 64], 1024, 2, 99, False, 512,
                                                                                    128)
    assert o.depths == [0, 2048, 8192]
    # every field set: the recommended deployment (group, window 64, sinks 4, q4_0 copy, decode-only policy)
    assert o.sparsek == SparsekSettings.off().replace(top_k=None, window=64, sinks=4, mode="group", score_type="q4_0",
                                                      max_ubatch=1)
    assert o.at(64).top_k == 64
    assert o.regime == "decode"  # prompts run dense under the policy, so quality is the decode regime's
    assert o.cache_types == ["q8_0", "q4_0"]


def test_bench_exact_measures_only_what_is_given() -> None:
    args = cli.build_parser().parse_args(["bench", "--topk", "64", "--exact", "--window", "16"])
    o = cli.bench_options(args, Path("m.gguf"), Path("t.txt"))
    assert o.sparsek == SparsekSettings.off().replace(top_k=None, window=16)
    assert o.regime == "prompt"


@pytest.mark.parametrize(("argv", "regime"), [
    ([], "decode"),
    (["--max-ubatch", "0"], "prompt"),         # Sparse-K on every ubatch: prompts are sparse too
    (["--max-ubatch", "512"], "prompt"),       # not below the ubatch size: prompts of one ubatch are sparse
    (["--max-ubatch", "4"], "decode"),
    (["--regime", "prompt"], "prompt"),        # an explicit regime wins
    (["--exact", "--max-ubatch", "1"], "decode"),
])
def test_the_quality_regime_follows_the_policy(argv: list[str], regime: str) -> None:
    args = cli.build_parser().parse_args(["bench", *argv])
    assert cli.bench_options(args, Path("m.gguf"), Path("t.txt")).regime == regime


def test_given_fields_override_the_recommended_ones() -> None:
    args = cli.build_parser().parse_args(["bench", "--mode", "token", "--score-type", "none"])
    o = cli.bench_options(args, Path("m.gguf"), Path("t.txt"))
    assert (o.sparsek.mode, o.sparsek.score_type, o.sparsek.window, o.sparsek.max_ubatch) == ("token", "none", 64, 1)


@pytest.mark.parametrize(("value", "expected"), [("none", []), ("q4_0", ["q4_0"]),
                                                 ("q8_0,q4_0,q8_0", ["q8_0", "q4_0"])])
def test_cache_types_option(value: str, expected: list[str]) -> None:
    args = cli.build_parser().parse_args(["bench", "--cache-types", value])
    assert args.cache_types == expected


def test_bench_sparsek_options_make_one_setting() -> None:
    args = cli.build_parser().parse_args(["bench", "--topk", "16,64", "--sinks", "4", "--stride", "16", "--mode",
                                          "group", "--window", "64", "--score-type", "q4_0", "--max-ubatch", "1"])
    o = cli.bench_options(args, Path("m.gguf"), Path("t.txt"))
    assert o.at(64) == SparsekSettings.off().replace(top_k=64, window=64, stride=16, sinks=4, mode="group",
                                                     score_type="q4_0", max_ubatch=1)


@pytest.mark.parametrize(("argv", "needle"), [
    (["--topk", "0"], "--topk"),
    (["--topk", "-8"], "--topk"),
    (["--backend", "rocm"], "--backend"),
    (["--rpc", "localhost"], "--rpc"),
    (["--rpc", "host:0"], "--rpc"),
    (["--mode", "diagonal"], "--mode"),
    (["--score-type", "q3"], "--score-type"),
    (["--sinks", "-1"], "--sinks"),
    (["--stride", "x"], "--stride"),
    (["--depths", "0,-1"], "--depths"),
    (["-c", "0"], "--ctx-size"),
    (["--cache-types", "q5_1"], "--cache-types"),
    (["--cache-types", ""], "--cache-types"),
])
def test_bad_bench_arguments_exit_2_with_the_option_named(argv: list[str], needle: str) -> None:
    proc = _run("bench", *argv)
    assert proc.returncode == 2
    assert needle in proc.stderr


# -- the Sparse-K options every command shares (settings.add_arguments) -----------------------------------------

@pytest.mark.parametrize("command", [["serve", "m.gguf"], ["meta", "set", "m.gguf"], ["convert", "ckpt"],
                                     ["compare"]])
def test_every_command_takes_the_same_sparsek_options(command: list[str]) -> None:
    argv = [*command, "--window", "8", "--stride", "16", "--sinks", "4", "--mode", "token", "--score-type", "f16",
            "--max-ubatch", "1"]
    args = cli.build_parser().parse_args(argv)
    assert SparsekSettings.from_args(args, skip=("top_k",)) == SparsekSettings(window=8, stride=16, sinks=4,
                                                                              mode="token", score_type="f16",
                                                                              max_ubatch=1)


def test_unset_sparsek_options_stay_unset() -> None:
    """serve and meta leave what is not given to the model's metadata."""
    args = cli.build_parser().parse_args(["serve", "m.gguf", "--topk", "64"])
    assert SparsekSettings.from_args(args) == SparsekSettings(top_k=64)


def test_serve_completes_a_topk_with_the_recommended_settings(tmp_path: Path) -> None:
    """Unless --exact; what the model's metadata already sets is left to it."""
    import gguf

    from pysparsek.sparsek.recommended import RECOMMENDED

    plain = tmp_path / "plain.gguf"
    w = gguf.GGUFWriter(plain, arch="llama")
    w.add_uint32("llama.attention.sparsek.window", 16)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()

    def settings(*argv: str) -> SparsekSettings:
        return cli.serve_settings(cli.build_parser().parse_args(["serve", str(plain), *argv]), plain)

    assert settings("--topk", "64") == RECOMMENDED.replace(top_k=64, window=None)
    assert settings("--topk", "64", "--exact") == SparsekSettings(top_k=64)
    assert settings() == SparsekSettings()  # no K given: the metadata decides
    assert settings("--topk", "64", "--mode", "head").mode == "head"


def test_serve_rejects_bad_settings_before_starting() -> None:
    proc = _run("serve", "m.gguf", "--topk", "-1")
    assert proc.returncode == 2
    assert "--topk" in proc.stderr and "must be >= 0" in proc.stderr


def test_serve_passes_the_settings_as_llama_cpp_flags() -> None:
    from pysparsek.cli import serve

    o = serve.ServeOptions(Path("m.gguf"), SparsekSettings(top_k=64, mode="group", sinks=4), ctx=1024)
    cmd = serve.command(Path("llama-server"), o)
    assert cmd[cmd.index("--sparsek-topk"):] == ["--sparsek-topk", "64", "--sparsek-sinks", "4", "--sparsek-mode",
                                                 "group", "-c", "1024"]


def test_rpc_puts_the_patched_layers_on_the_servers() -> None:
    from pysparsek.measure import bench

    args = cli.build_parser().parse_args(["bench", "m.gguf", "--rpc", "10.0.0.2:50052, 10.0.0.3:50052"])
    o = cli.bench_options(args, Path("m.gguf"), Path("t.txt"))
    assert o.rpc == "10.0.0.2:50052,10.0.0.3:50052"
    assert bench.remote_args(o) == (99, ("--rpc", "10.0.0.2:50052,10.0.0.3:50052"))
    o.ngl = 20
    assert bench.remote_args(o)[0] == 20
    o.rpc = ""
    assert bench.remote_args(o) == (20, ())


def test_rpc_with_the_decode_regime_is_one_clear_line() -> None:
    proc = _run("bench", "--rpc", "127.0.0.1:1", "--regime", "decode")
    assert proc.returncode == 2
    assert proc.stderr.startswith("pysparsek: error: --rpc applies to the prompt regime"), proc.stderr
