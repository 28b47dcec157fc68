"""`pysparsek convert`: a Hugging Face checkpoint to GGUF with the pinned tree's convert_hf_to_gguf.py,
optionally quantized with llama-quantize, with Sparse-K metadata so the model runs sparse on load."""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from pysparsek.errors import UserError
from pysparsek.llamacpp import build as builds
from pysparsek.proc import ToolError, run
from pysparsek.sparsek import meta
from pysparsek.sparsek.settings import SparsekSettings

OUTTYPES = ("f32", "f16", "bf16", "q8_0")
CONVERT_REQUIREMENTS = ("torch", "transformers", "sentencepiece", "google.protobuf")


class ConvertError(UserError, RuntimeError):
    """The checkpoint cannot be found, fetched or converted."""


def _missing_requirements() -> list[str]:
    import importlib.util

    return [m for m in CONVERT_REQUIREMENTS if importlib.util.find_spec(m) is None]


def resolve_checkpoint(src: str) -> Path:
    """A local checkpoint directory, or a hub id downloaded with huggingface_hub (needs network)."""
    path = Path(src)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConvertError(f"{path} has no config.json: not a Hugging Face checkpoint directory")
        return path
    if path.exists() or src.count("/") != 1:
        raise ConvertError(f"{src} is neither a checkpoint directory nor a Hugging Face repo id (OWNER/NAME)")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(src))
    except Exception as exc:  # the hub client raises many kinds; all mean "not available here"
        raise ConvertError(f"cannot download {src} from the Hugging Face Hub ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else 'no detail'}); without network access, "
                           f"download the checkpoint elsewhere and pass its directory") from exc


def convert(src: str, out: Path, outtype: str = "f16", quant: str | None = None,
            sparsek: SparsekSettings | None = None, backend: str = "cpu") -> Path:
    if outtype not in OUTTYPES:
        raise ConvertError(f"unknown --outtype {outtype!r}; choose one of {', '.join(OUTTYPES)}")
    missing = _missing_requirements()
    if missing:
        raise ConvertError(f"convert_hf_to_gguf.py needs {', '.join(missing)}: "
                           "pip install -e '.[convert]' (torch==2.13.0 comes from the local wheel)")
    checkpoint = resolve_checkpoint(src)
    tree = builds.prepare_tree("patched", log=lambda *_: None)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pysparsek-convert-", dir=out.parent) as tmp:
        f = Path(tmp) / f"model-{outtype}.gguf"
        try:
            run([sys.executable, str(tree / "convert_hf_to_gguf.py"), str(checkpoint), "--outtype", outtype,
                 "--outfile", str(f)])
        except ToolError as exc:
            raise ConvertError(f"conversion of {checkpoint} failed: {exc}") from exc
        if quant:
            q = Path(tmp) / f"model-{quant}.gguf"
            try:
                quantize = builds.require("patched", backend, tools=("llama-quantize",)).tool("llama-quantize")
                run([str(quantize), str(f), str(q), quant])
            except ToolError as exc:
                raise ConvertError(f"llama-quantize {quant} failed: {exc}") from exc
            f = q
        if sparsek and sparsek.given():
            meta.write(f, out, sparsek)
        else:
            shutil.move(str(f), out)
    return out
