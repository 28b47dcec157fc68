"""`pysparsek serve`: llama-server from the patched build, Sparse-K set by its own --sparsek-* flags."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from pysparsek.llamacpp import build as builds
from pysparsek.sparsek.settings import SparsekSettings


@dataclass
class ServeOptions:
    model: Path
    sparsek: SparsekSettings = field(default_factory=SparsekSettings)  # unset fields: the model's metadata
    host: str = "127.0.0.1"
    port: int = 8080
    ctx: int | None = None
    threads: int | None = None
    ngl: int | None = None
    flash_attn: str | None = None
    extra: list[str] = field(default_factory=list)


def command(server: Path, o: ServeOptions) -> list[str]:
    cmd = [str(server), "-m", str(o.model), "--host", o.host, "--port", str(o.port)]
    cmd += o.sparsek.flags()
    for flag, value in {"-c": o.ctx, "-t": o.threads, "-ngl": o.ngl, "-fa": o.flash_attn}.items():
        if value is not None:
            cmd += [flag, str(value)]
    return cmd + o.extra


def exec_server(o: ServeOptions, backend: str = "cpu") -> None:
    """Replace this process with llama-server, so signals (Ctrl-C, SIGTERM) reach the server directly."""
    server = builds.require("patched", backend, tools=("llama-server",)).tool("llama-server")
    cmd = command(server, o)
    print(f"pysparsek: serving {o.model.name} on http://{o.host}:{o.port} (OpenAI-compatible /v1, settings in "
          f"/props): {' '.join(cmd)}", flush=True)
    os.execv(cmd[0], cmd)
