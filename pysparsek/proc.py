"""Running external tools with errors a user can read."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from pysparsek.errors import UserError


class ToolError(UserError, RuntimeError):
    """An external command failed; the message carries its last output lines."""


def tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def run(
    cmd: Sequence[str | os.PathLike[str]],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    capture: bool = True,
    check: bool = True,
    input_bytes: bytes | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run cmd; on failure raise ToolError naming the command and showing its last lines."""
    full_env = {**os.environ, **(env or {})}
    argv = [str(c) for c in cmd]
    proc = subprocess.run(
        argv,
        cwd=cwd,
        env=full_env,
        input=input_bytes.decode() if input_bytes is not None else None,
        stdout=subprocess.PIPE if capture else None,
        stderr=subprocess.STDOUT if capture else None,
        text=True,
        check=False,
    )
    if check and proc.returncode != 0:
        shown = tail(proc.stdout or "") if capture else "(output above)"
        raise ToolError(f"{Path(argv[0]).name} failed (exit {proc.returncode}): {' '.join(argv)}\n{shown}")
    return proc


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (for a local server)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
