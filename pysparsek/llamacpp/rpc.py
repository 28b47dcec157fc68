"""ggml's RPC backend: endpoint lists for `--rpc`, and ggml-rpc-server processes on this machine (tests, demos).

A remote machine runs the patched `ggml-rpc-server` of the same patch series as the client: the patched HELLO
carries the op table's fingerprint, and each side refuses a peer that numbers ops differently (patch 0015).
"""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pysparsek.errors import UserError
from pysparsek.llamacpp.build import Build
from pysparsek.proc import free_port

SERVER = "ggml-rpc-server"
_ENDPOINT = re.compile(r"^[A-Za-z0-9_.\-]+:(\d{1,5})$")


class RpcError(UserError):
    """An RPC endpoint list is malformed or a local server did not start."""


def parse_endpoints(value: str) -> list[str]:
    """'HOST:PORT[,HOST:PORT...]' as a list; a clear error for anything else."""
    endpoints = [e.strip() for e in value.split(",") if e.strip()]
    if not endpoints:
        raise RpcError("no RPC servers given (expected HOST:PORT[,HOST:PORT...])")
    for e in endpoints:
        m = _ENDPOINT.match(e)
        if not m or not 0 < int(m.group(1)) < 65536:
            raise RpcError(f"invalid RPC server {e!r} (expected HOST:PORT, e.g. 192.168.1.10:50052)")
    return endpoints


def _listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class LocalServer:
    endpoint: str
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.is_file() else ""


@dataclass
class LocalServers:
    servers: list[LocalServer] = field(default_factory=list)

    @property
    def endpoints(self) -> str:
        return ",".join(s.endpoint for s in self.servers)


def start(build: Build, log_dir: Path, *, threads: int | None = None, timeout_s: float = 30.0) -> LocalServer:
    """One ggml-rpc-server of `build` on 127.0.0.1 at a free port, returned once it accepts connections.

    Its output goes to a file: a server that nobody reads must never block on a full pipe.
    """
    port = free_port()
    log = log_dir / f"{SERVER}-{build.flavor}-{port}.log"
    cmd = [str(build.tool(SERVER)), "-H", "127.0.0.1", "-p", str(port)]
    if threads:
        cmd += ["-t", str(threads)]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    server = LocalServer(f"127.0.0.1:{port}", proc, log)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RpcError(f"{SERVER} exited with {proc.returncode} before listening:\n{server.output()[-2000:]}")
        if _listening(port):
            # the probe was a client too: the server logs it and waits for the next one
            return server
        time.sleep(0.1)
    server.stop()
    raise RpcError(f"{SERVER} did not listen on 127.0.0.1:{port} within {timeout_s:.0f} s")


@contextlib.contextmanager
def local_servers(build: Build, n: int, log_dir: Path, *, threads: int | None = None) -> Iterator[LocalServers]:
    """n ggml-rpc-server processes of `build` on 127.0.0.1, stopped on exit."""
    group = LocalServers()
    try:
        for _ in range(n):
            group.servers.append(start(build, log_dir, threads=threads))
        yield group
    finally:
        for s in group.servers:
            s.stop()
