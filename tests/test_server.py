"""llama-server from the patched build with Sparse-K: end to end over HTTP, settings visible in /props, bad settings
refused before anything loads."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pysparsek.llamacpp import build as builds
from pysparsek.measure import passkey
from pysparsek.proc import free_port
from pysparsek.sparsek.settings import SparsekSettings

pytestmark = [pytest.mark.build, pytest.mark.slow]

STARTUP_S = 180.0


@contextlib.contextmanager
def _serving(cmd: list[str], log: Path, port: int) -> Iterator[httpx.Client]:
    """Start the server, wait for /health, yield a client; always stop it and check it stopped cleanly."""
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120.0)
        deadline = time.monotonic() + STARTUP_S
        while True:
            assert proc.poll() is None, f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"server not ready after {STARTUP_S:.0f} s:\n{log.read_text()[-3000:]}"
            with contextlib.suppress(httpx.TransportError):
                if client.get("/health").status_code == 200:
                    break
            time.sleep(0.5)
        yield client
        client.close()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # what Ctrl-C sends: the server finishes and exits by itself
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                pytest.fail("server did not stop within 60 s of SIGINT")
    assert proc.returncode == 0, f"server exit code {proc.returncode}:\n{log.read_text()[-3000:]}"


def test_server_answers_with_sparsek_and_reports_it(patched_build: builds.Build, model: Path,
                                                    tmp_path: Path) -> None:
    """Started through `pysparsek serve`; a ~400-token passkey prompt, so K=64 really drops cells."""
    port = free_port()
    cmd = [sys.executable, "-m", "pysparsek", "serve", str(model), "--topk", "64", "--mode", "group", "--sinks", "4",
           "--exact", "--port", str(port), "-c", "1024", "-t", "2", "--", "--parallel", "1"]
    log = tmp_path / "server.log"
    with _serving(cmd, log, port) as client:
        props = client.get("/props").json()
        assert SparsekSettings.from_mapping(props["sparsek"]) == SparsekSettings(top_k=64, mode="group",
                                                                                  sinks=4).resolved()

        prompt = passkey.prompt(n_junk=20, i_pos=7, key=48213)
        r = client.post("/v1/completions", json={"prompt": prompt, "max_tokens": 8, "temperature": 0,
                                                 "seed": 1})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["usage"]["prompt_tokens"] > 64 * 3  # long enough that every late row keeps < 1/3 of its cells
        assert "48213" in body["choices"][0]["text"], body["choices"][0]["text"]


def test_server_without_sparsek_flags_reports_it_off(patched_build: builds.Build, model: Path,
                                                     tmp_path: Path) -> None:
    port = free_port()
    cmd = [str(patched_build.tool("llama-server")), "-m", str(model), "--host", "127.0.0.1", "--port", str(port),
           "-c", "512", "-t", "2"]
    with _serving(cmd, tmp_path / "server.log", port) as client:
        assert client.get("/props").json()["sparsek"]["top_k"] == 0


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--sparsek-topk", "-1", "--sparsek-topk must be >= 0"),
    ("--sparsek-mode", "diagonal", "--sparsek-mode must be head, group or token"),
    ("--sparsek-window", "-3", "--sparsek-window must be >= 0"),
    ("--sparsek-sparq-shared", "2", "--sparsek-sparq-shared must be 0 or 1"),
])
def test_server_refuses_bad_settings(patched_build: builds.Build, model: Path, flag: str, value: str,
                                     message: str) -> None:
    proc = subprocess.run([str(patched_build.tool("llama-server")), "-m", str(model), "--port", str(free_port()),
                           flag, value], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr
    assert "server is listening" not in proc.stdout + proc.stderr


def test_server_with_a_q4_0_copy_and_the_decode_only_policy(patched_build: builds.Build, model: Path,
                                                             tmp_path: Path) -> None:
    """`serve --topk 64` alone is the recommended deployment (group, window 64, sinks 4, q4_0 copy, decode-only
    policy): /props reports it, and the answer still recalls the key."""
    from pysparsek.sparsek.recommended import RECOMMENDED

    port = free_port()
    cmd = [sys.executable, "-m", "pysparsek", "serve", str(model), "--topk", "64", "--port", str(port), "-c", "1024",
           "-t", "2", "--", "--parallel", "1"]
    with _serving(cmd, tmp_path / "server.log", port) as client:
        sk = client.get("/props").json()["sparsek"]
        assert SparsekSettings.from_mapping(sk) == RECOMMENDED.replace(top_k=64).resolved()
        assert (sk["score_type"], sk["max_ubatch"], sk["top_k"]) == ("q4_0", 1, 64)
        r = client.post("/v1/completions", json={"prompt": passkey.prompt(n_junk=20, i_pos=7, key=48213),
                                                 "max_tokens": 8, "temperature": 0, "seed": 1})
        assert r.status_code == 200, r.text
        assert "48213" in r.json()["choices"][0]["text"]
