"""A llama-server process for measurements and tests: started on a free loopback port, ready when /health says so,
stopped with SIGINT (what Ctrl-C sends) and checked to have exited cleanly; its slots and metrics read back."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from pysparsek.errors import UserError
from pysparsek.sparsek.settings import SparsekSettings


class ServerError(UserError, RuntimeError):
    """The server did not start, died, or did not stop cleanly."""


@dataclass(frozen=True)
class ServerConfig:
    """What one llama-server runs with (besides the model); `sparsek` unset fields keep the model's metadata."""
    sparsek: SparsekSettings = field(default_factory=SparsekSettings)
    ctx: int = 4096              # the whole KV cache (-c); a slot's share depends on --kv-unified
    parallel: int = 4            # -np: slots decoded together (continuous batching is llama-server's default)
    threads: int = 2
    flash_attn: str = "on"
    extra: tuple[str, ...] = ()  # more llama-server arguments, e.g. ("--slot-save-path", DIR, "--context-shift")

    def args(self) -> list[str]:
        return [*self.sparsek.flags(), "-c", str(self.ctx), "-np", str(self.parallel), "-t", str(self.threads),
                "-fa", self.flash_attn, "--metrics", *self.extra]


def command(server: Path, model: Path, config: ServerConfig, port: int) -> list[str]:
    return [str(server), "-m", str(model), "--host", "127.0.0.1", "--port", str(port), *config.args()]


@dataclass
class RunningServer:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc.poll() is None


def _wait_ready(server: RunningServer, startup_s: float) -> None:
    deadline = time.monotonic() + startup_s
    with httpx.Client(base_url=server.url, timeout=5.0) as client:
        while True:
            if not server.alive():
                raise ServerError(f"server exited with {server.proc.returncode}:\n{server.log_tail()}")
            if time.monotonic() > deadline:
                raise ServerError(f"server not ready after {startup_s:.0f} s:\n{server.log_tail()}")
            with contextlib.suppress(httpx.TransportError):
                if client.get("/health").status_code == 200:
                    return
            time.sleep(0.3)


def stop(server: RunningServer, timeout_s: float = 60.0) -> int:
    """SIGINT, as Ctrl-C: the server finishes and exits by itself; killed (and an error) after timeout_s."""
    if server.alive():
        server.proc.send_signal(signal.SIGINT)
        try:
            server.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()
            raise ServerError(f"server did not stop within {timeout_s:.0f} s of SIGINT") from None
    return int(server.proc.returncode)


@contextlib.contextmanager
def serving(cmd: list[str], log: Path, port: int, startup_s: float = 180.0) -> Iterator[RunningServer]:
    """Start `cmd` (a llama-server listening on `port`), yield it once /health answers 200, always stop it; a
    server that crashed or exits non-zero on SIGINT is an error even when the body succeeded."""
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    server = RunningServer(proc, port, log)
    try:
        _wait_ready(server, startup_s)
        yield server
    finally:
        was_alive = server.alive()
        code = stop(server)
    if not was_alive or code != 0:
        raise ServerError(f"server {'died' if not was_alive else 'stopped'} with exit code {code}:\n"
                          f"{server.log_tail()}")


# -- what the server says about itself --------------------------------------------------------------------------

def busy_slots(client: httpx.Client) -> list[int]:
    """Ids of the slots that are still processing a task (none once every request has been answered)."""
    r = client.get("/slots")
    r.raise_for_status()
    return [int(s["id"]) for s in r.json() if s.get("is_processing")]


def metrics(client: httpx.Client) -> dict[str, float]:
    """/metrics (Prometheus text, needs --metrics) as {name: value}, e.g. 'llamacpp:requests_processing'."""
    r = client.get("/metrics")
    r.raise_for_status()
    out: dict[str, float] = {}
    for line in r.text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                out[name.strip()] = float(value)
    return out


def leaks(client: httpx.Client) -> list[str]:
    """What is still held after every request has been answered: busy slots, requests processing or deferred."""
    found = [f"slot {i} still processing" for i in busy_slots(client)]
    m = metrics(client)
    for name in ("llamacpp:requests_processing", "llamacpp:requests_deferred"):
        if m.get(name, 0.0) != 0.0:
            found.append(f"{name} = {m[name]:g}")
    return found


def tokenize(client: httpx.Client, text: str) -> list[int]:
    r = client.post("/tokenize", json={"content": text, "add_special": False})
    r.raise_for_status()
    return [int(t) for t in r.json()["tokens"]]


def props(client: httpx.Client) -> dict[str, Any]:
    r = client.get("/props")
    r.raise_for_status()
    return dict(r.json())
