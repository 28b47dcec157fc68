"""Run llama-perplexity and read its results (it has no machine-readable output format, so its fixed
`[i]value,` and `Final estimate:` lines are parsed)."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path

from pysparsek.errors import UserError
from pysparsek.llamacpp.build import Build
from pysparsek.proc import run, tail
from pysparsek.sparsek.settings import SparsekSettings

_CHUNK = re.compile(r"\[(\d+)\](-?[0-9.]+|nan|inf),")
_FINAL = re.compile(r"Final estimate: PPL = ([0-9.]+|nan|inf) \+/- ([0-9.]+|nan|inf)")
_KLD = re.compile(r"Mean\s+KLD:\s+(-?[0-9.]+)\s+±\s+([0-9.]+)")
_SAME_TOP = re.compile(r"Same top p:\s+([0-9.]+)\s+±\s+([0-9.]+) %")
_TOO_SHORT = re.compile(r"you need at least (\d+) tokens to evaluate perplexity with a context of (\d+)")
_PPL_Q = re.compile(r"Mean PPL\(Q\)\s+:\s+([0-9.]+)\s+±\s+([0-9.]+)")


class PerplexityError(UserError, RuntimeError):
    """llama-perplexity failed or printed nothing parseable."""


@dataclass
class PerplexityResult:
    chunks: list[str]           # running estimates as printed (exact text, for identity checks)
    final: str                  # "PPL" as printed
    final_stderr: str
    output: str = field(repr=False)
    kld_mean: float | None = None
    kld_stderr: float | None = None
    same_top_pct: float | None = None

    @property
    def ppl(self) -> float:
        return float(self.final)


@dataclass(frozen=True)
class Settings:
    """One llama-perplexity run; `sparsek` fields left unset keep the model's metadata."""
    ctx: int = 512
    chunks: int = 4
    batch: int = 2048
    ubatch: int = 512
    threads: int | None = None
    flash_attn: str = "off"        # on | off | auto
    sparsek: SparsekSettings = field(default_factory=SparsekSettings)
    extra: tuple[str, ...] = ()

    def without_sparsek(self) -> Settings:
        """The same run for a build that has no Sparse-K flags (stock)."""
        return dataclasses.replace(self, sparsek=SparsekSettings())

    def with_sparsek(self, **changes: object) -> Settings:
        """The same run with these Sparse-K fields changed."""
        return dataclasses.replace(self, sparsek=self.sparsek.replace(**changes))


def command(build: Build, model: Path, text: Path, s: Settings) -> list[str]:
    cmd = [str(build.tool("llama-perplexity")), "-m", str(model), "-f", str(text), "-c", str(s.ctx),
           "--chunks", str(s.chunks), "-b", str(s.batch), "-ub", str(s.ubatch), "-fa", s.flash_attn,
           "--no-warmup", "-ngl", "99" if build.backend == "cuda" else "0"]
    if s.threads:
        cmd += ["-t", str(s.threads)]
    return cmd + s.sparsek.flags() + list(s.extra)


def parse(output: str) -> PerplexityResult:
    final = _FINAL.search(output)
    if not final:
        raise PerplexityError(f"llama-perplexity printed no final estimate:\n{tail(output)}")
    res = PerplexityResult(chunks=[m.group(2) for m in _CHUNK.finditer(output)], final=final.group(1),
                           final_stderr=final.group(2), output=output)
    if kld := _KLD.search(output):
        res.kld_mean, res.kld_stderr = float(kld.group(1)), float(kld.group(2))
    if same := _SAME_TOP.search(output):
        res.same_top_pct = float(same.group(1))
    return res


def parse_kld(output: str) -> PerplexityResult:
    """Output of a --kl-divergence run, which reports PPL(Q) instead of a final estimate."""
    ppl = _PPL_Q.search(output)
    kld = _KLD.search(output)
    if not ppl or not kld:
        raise PerplexityError(f"llama-perplexity --kl-divergence printed no summary:\n{tail(output)}")
    same = _SAME_TOP.search(output)
    return PerplexityResult(chunks=[], final=ppl.group(1), final_stderr=ppl.group(2), output=output,
                            kld_mean=float(kld.group(1)), kld_stderr=float(kld.group(2)),
                            same_top_pct=float(same.group(1)) if same else None)


def measure(build: Build, model: Path, text: Path, s: Settings, *, save_logits: Path | None = None,
            kld_base: Path | None = None, env: dict[str, str] | None = None) -> PerplexityResult:
    """Perplexity of `model` on `text`; save_logits writes a KL-divergence base file, kld_base compares to one;
    env: extra environment variables for the tool."""
    cmd = command(build, model, text, s)
    if save_logits is not None:
        cmd += ["--kl-divergence-base", str(save_logits)]
    if kld_base is not None:
        cmd += ["--kl-divergence-base", str(kld_base), "--kl-divergence"]
    proc = run(cmd, check=False, env=env)
    # llama-perplexity may exit 0 after refusing a short text, so look for its message either way
    short = _TOO_SHORT.search(proc.stdout)
    if short:
        raise PerplexityError(f"the text {text} is too short: llama-perplexity needs at least {short.group(1)} "
                              f"tokens (2 x the context of {short.group(2)})")
    if proc.returncode != 0:
        raise PerplexityError(f"llama-perplexity failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail(proc.stdout)}")
    return parse_kld(proc.stdout) if kld_base is not None else parse(proc.stdout)
