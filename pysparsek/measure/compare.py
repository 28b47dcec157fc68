"""Stock vs patched-with-Sparse-K-off vs Sparse-K at each K: perplexity, KL divergence, top-1 agreement."""

from __future__ import annotations

import filecmp
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from tqdm import tqdm

from pysparsek.llamacpp import build as builds
from pysparsek.measure import perplexity
from pysparsek.measure.perplexity import PerplexityResult, Settings


@dataclass
class SparseRow:
    topk: int
    result: PerplexityResult
    identical_to_stock: bool | None = None  # for exact-check rows: same chunks, final and log-probs as stock
    cache_type: str = "f16"   # a row with topk 0 is stock, dense, with this quantized K/V cache


@dataclass
class Comparison:
    stock: PerplexityResult
    disabled: PerplexityResult
    identical: bool            # same printed chunks, same final, byte-identical log-prob files
    sparse: list[SparseRow]

    def table(self) -> str:
        dense = self.stock.ppl
        lines = [f"{'run':<22} {'PPL':>10} {'ΔPPL %':>8} {'KL div':>10} {'top-1 agree %':>14}",
                 f"{'stock':<22} {self.stock.final:>10} {'':>8} {'':>10} {'':>14}",
                 f"{'patched, Sparse-K off':<22} {self.disabled.final:>10} {'':>8} {'':>10} {'':>14}"]
        for row in self.sparse:
            r = row.result
            if row.identical_to_stock is not None:
                same = "identical to stock" if row.identical_to_stock else "DIFFERENT from stock"
                lines.append(f"{'Sparse-K top_k=' + str(row.topk):<22} {r.final:>10} {same}")
                continue
            delta = 100.0 * (r.ppl - dense) / dense
            name = f"Sparse-K top_k={row.topk}" if row.topk else f"dense, {row.cache_type} cache"
            lines.append(f"{name:<22} {r.final:>10} {delta:>+8.2f} "
                         f"{r.kld_mean:>10.6f} {r.same_top_pct:>14.3f}")
        verdict = "IDENTICAL" if self.identical else "DIFFERENT"
        lines.append(f"stock vs patched with Sparse-K off: {verdict} (per-chunk values, final estimate, log-probs)")
        return "\n".join(lines)


def run(model: Path, text: Path, settings: Settings, topks: list[int], backend: str = "cpu",
        quiet: bool = False, exact_topks: tuple[int, ...] = (), patched_extra: tuple[str, ...] = (),
        cache_types: tuple[str, ...] = (), keep_stock_logits: Path | None = None, workers: int = 1) -> Comparison:
    """exact_topks: K values expected to reproduce stock exactly (K >= context); they are compared byte for byte
    instead of through KL divergence. patched_extra: more arguments for the patched runs only (e.g. --rpc).
    cache_types: also stock, dense, with each of these quantized K/V caches (what users pick instead).
    keep_stock_logits: copy the stock run's saved logits there (a KL base for more runs of the same settings).
    workers: llama-perplexity processes at a time (each loads the model: for small models; give settings.threads
    so that workers x threads fits the cores). Stock and patched-off run together, then the rest, which need
    stock's logits; results do not depend on it."""
    stock_build = builds.require("stock", backend, tools=("llama-perplexity",))
    stock_settings = settings.without_sparsek()
    settings = replace(settings, extra=settings.extra + patched_extra)
    patched_build = builds.require("patched", backend, tools=("llama-perplexity",))
    steps = tqdm(total=2 + len(topks) + len(exact_topks) + len(cache_types), desc="perplexity", unit="run",
                 disable=quiet)

    def measured(*args, **kwargs) -> PerplexityResult:
        res = perplexity.measure(*args, **kwargs)
        steps.update()
        return res

    with tempfile.TemporaryDirectory(prefix="pysparsek-") as tmp, ThreadPoolExecutor(max(1, workers)) as pool:
        base_file = Path(tmp) / "stock.kld"
        off_file = Path(tmp) / "patched-off.kld"
        stock_run = pool.submit(measured, stock_build, model, text, stock_settings, save_logits=base_file)
        disabled_run = pool.submit(measured, patched_build, model, text, settings.with_sparsek(top_k=0),
                                   save_logits=off_file)
        stock = stock_run.result()
        if keep_stock_logits is not None:
            shutil.copyfile(base_file, keep_stock_logits)
        k_files = {k: Path(tmp) / f"k{k}.kld" for k in exact_topks}
        sparse_runs = [pool.submit(measured, patched_build, model, text, settings.with_sparsek(top_k=k),
                                   kld_base=base_file) for k in topks]
        exact_runs = [pool.submit(measured, patched_build, model, text, settings.with_sparsek(top_k=k),
                                  save_logits=k_files[k]) for k in exact_topks]
        cache_runs = [pool.submit(measured, stock_build, model, text,
                                  replace(stock_settings, extra=(*stock_settings.extra, "-ctk", t, "-ctv", t)),
                                  kld_base=base_file) for t in cache_types]
        disabled = disabled_run.result()
        identical = (stock.chunks == disabled.chunks and stock.final == disabled.final
                     and filecmp.cmp(base_file, off_file, shallow=False))
        sparse = [SparseRow(k, f.result()) for k, f in zip(topks, sparse_runs, strict=True)]
        for k, f in zip(exact_topks, exact_runs, strict=True):
            res = f.result()
            same = res.chunks == stock.chunks and res.final == stock.final and filecmp.cmp(base_file, k_files[k],
                                                                                           shallow=False)
            sparse.append(SparseRow(k, res, identical_to_stock=same))
        sparse += [SparseRow(0, f.result(), cache_type=t) for t, f in zip(cache_types, cache_runs, strict=True)]
    steps.close()
    return Comparison(stock, disabled, identical, sparse)
