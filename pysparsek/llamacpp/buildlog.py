"""Run a build command quietly: the full output goes to a log file, the terminal shows one progress line."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path

from tqdm import tqdm

from pysparsek.proc import ToolError

# Ninja's status prefix, "[12/345] Building CXX object ..."
_NINJA_STEP = re.compile(r"^\[(\d+)/(\d+)\]")


def run_logged(cmd: Sequence[str], *, env: Mapping[str, str], log_path: Path, label: str,
               tail_lines: int = 40) -> None:
    """Run cmd with its output written to log_path; show [n/N] as a progress bar; on failure raise with the tail."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    last: deque[str] = deque(maxlen=tail_lines)
    progress = _Progress(label)
    with log_path.open("w") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        proc = subprocess.Popen(list(cmd), env={**os.environ, **env}, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, errors="replace")
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            last.append(line.rstrip("\n"))
            step = _NINJA_STEP.match(line)
            if step:
                progress.update(int(step.group(1)), int(step.group(2)))
        rc = proc.wait()
    progress.close()
    if rc != 0:
        shown = "\n".join(last)
        raise ToolError(f"{label} failed (exit {rc}); full log: {log_path}\n--- last {len(last)} lines ---\n{shown}")


class _Progress:
    """A redrawn bar on a terminal; elsewhere (CI logs) one plain line per 10 % so the log stays readable."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.bar = tqdm(desc=label, unit="step", file=sys.stderr, dynamic_ncols=True) if sys.stderr.isatty() else None
        self.printed_decile = -1

    def update(self, done: int, total: int) -> None:
        if self.bar is not None:
            if self.bar.total != total:
                self.bar.reset(total=total)
            self.bar.update(done - self.bar.n)
            return
        decile = 10 * done // max(total, 1)
        if decile > self.printed_decile:
            self.printed_decile = decile
            print(f"{self.label}: [{done}/{total}]", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
