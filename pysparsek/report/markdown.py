"""A bench result's files: results.json, report.md (the tables of `tables`) and the plots."""

from __future__ import annotations

import json
from pathlib import Path

from pysparsek.measure.results import BenchResult
from pysparsek.report import plots
from pysparsek.report.tables import header, headline, quality_table, speed_table


def write_report(r: BenchResult, out: Path) -> list[Path]:
    """results.json, report.md and the plots in out/."""

    out.mkdir(parents=True, exist_ok=True)
    written = [out / "results.json", out / "report.md"]
    (out / "results.json").write_text(json.dumps(r.to_json(), indent=2) + "\n")
    written += plots.write(r, out)
    md = ["# pysparsek bench", "", "```", header(r), "```", "", "## Quality", "", "```", quality_table(r), "```",
          "", "## Speed (t/s: median over separate processes, spread = max/min; ratio = Sparse-K t/s / dense t/s, "
          "median of same-round ratios)", "",
          "```", speed_table(r), "```", "", "```", headline(r), "```", ""]
    md += [f"![{p.stem}]({p.name})" for p in written if p.suffix == ".png"]
    (out / "report.md").write_text("\n".join(md) + "\n")
    return written
