"""llama-server with Sparse-K serving many: a bounded load (concurrent clients, -np 4, streaming and not) with no
failed request, no crash and no slot left held; slot save/restore and context shift with the q4_0 score copy;
"sparsek" fields in a request. The full load run with figures is scripts/serve_load.py."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from pysparsek.data import corpus
from pysparsek.llamacpp import build as builds
from pysparsek.measure import load, server
from pysparsek.proc import free_port
from pysparsek.sparsek.recommended import RECOMMENDED
from pysparsek.sparsek.settings import SparsekSettings

SPARSE = RECOMMENDED.replace(top_k=64, score_type="q4_0")  # group, window 64, sinks 4, q4_0 copy
POLICIES = {"decode-only": SPARSE.replace(max_ubatch=1), "every-ubatch": SPARSE.replace(max_ubatch=0)}
# One compute thread: on a shared 2-core machine, -t 2 while another process holds a core makes ggml's thread
# barriers wait on a descheduled thread (measured: 3 s per decoded token instead of 30 ms).
THREADS = 1


# -- pure parts, no server --------------------------------------------------------------------------------------

def test_first_divergence() -> None:
    assert load.first_divergence([1, 2, 3], [1, 2, 3]) is None
    assert load.first_divergence([1, 2, 3], [1, 5, 3]) == 1
    assert load.first_divergence([1, 2], [1, 2, 3]) == 2
    assert load.first_divergence([], []) is None


def test_percentile_is_nearest_rank() -> None:
    assert load.percentile([], 50) is None
    assert load.percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert load.percentile([float(i) for i in range(1, 21)], 95) == 19.0
    assert load.percentile([float(i) for i in range(1, 21)], 100) == 20.0


def test_workload_spreads_lengths_and_streams_every_other() -> None:
    reqs = load.workload(list(range(1000)), 5, max_prompt=200, n_predict=[8, 16], min_prompt=20)
    assert sorted(len(r.prompt) for r in reqs) == [20, 65, 110, 155, 200]
    assert [r.stream for r in reqs] == [True, False, True, False, True]
    assert [r.n_predict for r in reqs] == [8, 16, 8, 16, 8]
    for r in reqs:  # contiguous slices of the text
        assert list(r.prompt) == list(range(r.prompt[0], r.prompt[0] + len(r.prompt)))
    with pytest.raises(ValueError, match="fewer than the shared prefix and the longest prompt"):
        load.workload(list(range(100)), 2, max_prompt=200, n_predict=[8])
    assert not any(r.cache_prompt or r.body()["cache_prompt"] for r in reqs)


def test_workload_with_a_shared_prefix_starts_every_prompt_with_it_and_caches_it() -> None:
    reqs = load.workload(list(range(1000)), 4, max_prompt=100, n_predict=[8], min_prompt=10, shared_prefix=300)
    assert sorted(len(r.prompt) - 300 for r in reqs) == [10, 40, 70, 100]
    for r in reqs:
        assert list(r.prompt[:300]) == list(range(300)) and r.body()["cache_prompt"] is True
        own = list(r.prompt[300:])  # another place of the text, after the prefix
        assert own[0] >= 300 and own == list(range(own[0], own[0] + len(own)))
    with pytest.raises(ValueError, match="fewer than the shared prefix"):
        load.workload(list(range(350)), 2, max_prompt=100, n_predict=[8], shared_prefix=300)
    with pytest.raises(ValueError, match="shared_prefix must be >= 0"):
        load.workload(list(range(350)), 2, max_prompt=100, n_predict=[8], shared_prefix=-1)


def test_agreement_and_summary_count_failures_and_divergences() -> None:
    a = load.Run([load.Outcome(0, True, 10, ok=True, n_predicted=3, text="abc", ttft_s=0.5, latency_s=1.0),
                  load.Outcome(1, False, 20, ok=True, n_predicted=3, tokens=[1, 9, 3], latency_s=2.0),
                  load.Outcome(3, False, 20, ok=True, n_predicted=3, tokens=[1, 2, 3], latency_s=2.0),
                  load.Outcome(2, False, 5, error="HTTP 500")], wall_s=3.0, clients=3)
    alone = load.Run([load.Outcome(0, True, 10, ok=True, n_predicted=3, text="abd"),
                      load.Outcome(1, False, 20, ok=True, n_predicted=3, tokens=[1, 2, 3]),
                      load.Outcome(3, False, 20, ok=True, n_predicted=3, tokens=[1, 2, 3]),
                      load.Outcome(2, False, 5, ok=True, n_predicted=1, tokens=[4])], wall_s=3.0, clients=1)
    ag = load.agreement(a, alone)
    assert (ag.compared, ag.identical, ag.divergences) == (2, 1, (1,))
    assert (ag.streamed_compared, ag.streamed_identical) == (1, 0)
    s = load.summarize(a)
    assert (s.requests, s.failed, s.generated_tokens, s.prompt_tokens) == (4, 1, 9, 50)
    assert s.generated_tok_s == 3.0 and s.ttft_p50_s == 0.5 and s.errors == ("#2: HTTP 500",)


# -- against the patched llama-server ---------------------------------------------------------------------------

@contextlib.contextmanager
def _server(patched: builds.Build, model: Path, tmp_path: Path, config: server.ServerConfig,
            name: str = "server") -> Iterator[tuple[server.RunningServer, httpx.Client]]:
    port = free_port()
    cmd = server.command(patched.tool("llama-server"), model, config, port)
    with server.serving(cmd, tmp_path / f"{name}.log", port) as srv, \
            httpx.Client(base_url=srv.url, timeout=300.0) as client:
        yield srv, client


@pytest.fixture(scope="module")
def text_tokens(patched_build: builds.Build, model: Path, tmp_path_factory: pytest.TempPathFactory) -> list[int]:
    """The start of the Jargon File in SmolLM2's tokens (the server's own tokenizer)."""
    text = corpus.default_text().read_text(encoding="utf-8")[:40_000]
    config = server.ServerConfig(ctx=512, parallel=1, threads=THREADS)
    with _server(patched_build, model, tmp_path_factory.mktemp("tok"), config) as (_, client):
        return server.tokenize(client, text)


def _complete(client: httpx.Client, prompt: list[int], n_predict: int, **extra: Any) -> dict[str, Any]:
    body = {"prompt": prompt, "n_predict": n_predict, "temperature": 0.0, "top_k": 1, "ignore_eos": True,
            "return_tokens": True, **extra}
    r = client.post("/completion", json=body)
    assert r.status_code == 200, r.text
    return dict(r.json())



@pytest.mark.build
@pytest.mark.slow
@pytest.mark.parametrize("policy", list(POLICIES))
def test_bounded_load_no_failure_no_crash_no_slot_leak(patched_build: builds.Build, model: Path, tmp_path: Path,
                                                       text_tokens: list[int], policy: str) -> None:
    """6 clients, 12 requests (prompts 16..400 tokens, so K=64 drops cells; half streamed), 4 slots: every request
    answered with all its tokens, then no slot processing and nothing processing or deferred in /metrics, and the
    server exits 0 on SIGINT (checked by server.serving)."""
    config = server.ServerConfig(sparsek=POLICIES[policy], ctx=2048, parallel=4, threads=THREADS)
    requests = load.workload(text_tokens, 12, max_prompt=400, n_predict=[8, 24], seed=1)
    with _server(patched_build, model, tmp_path, config) as (srv, client):
        assert SparsekSettings.from_mapping(server.props(client)["sparsek"]) == POLICIES[policy].resolved()
        run = load.run(srv.url, requests, clients=6, timeout_s=120.0)
        summary = load.summarize(run)
        assert summary.failed == 0, summary.errors
        assert summary.generated_tokens == sum(r.n_predict for r in requests)
        assert all(o.ttft_s is not None for o in run.outcomes if o.stream)
        assert server.leaks(client) == []
        m = server.metrics(client)
        assert m["llamacpp:n_decode_total"] > 0
        assert srv.alive()


@pytest.mark.build
@pytest.mark.slow
def test_one_client_alternating_streamed_and_plain_requests(patched_build: builds.Build, model: Path, tmp_path: Path,
                                                            text_tokens: list[int]) -> None:
    """One client, 20 requests one after another, every other one streamed: all answered. (llama-server can close
    a connection after a streamed answer while the client still holds it as kept alive; load.send gives a streamed
    request a connection of its own. Without that, 3 of these 20 failed before reaching the server.)"""
    config = server.ServerConfig(ctx=512, parallel=1, threads=THREADS)
    requests = [load.Request(tuple(text_tokens[i:i + 40]), 4, stream=i % 2 == 0) for i in range(20)]
    with _server(patched_build, model, tmp_path, config) as (srv, client):
        summary = load.summarize(load.run_alone(srv.url, requests))
        assert summary.failed == 0, summary.errors
        assert server.leaks(client) == []


def _slot_state_continuation(client: httpx.Client, prompt: list[int]) -> tuple[list[int], list[int], int, int]:
    """Greedy on slot 0: answer, save, continue (live); erase, restore, continue again. Returns both
    continuations and how many prompt tokens each had to evaluate."""
    first = _complete(client, prompt, 16, id_slot=0, cache_prompt=True)["tokens"]
    r = client.post("/slots/0", params={"action": "save"}, json={"filename": "slot0.bin"})
    assert r.status_code == 200, r.text
    assert r.json()["n_saved"] >= len(prompt)
    follow = prompt + first
    live = _complete(client, follow, 32, id_slot=0, cache_prompt=True)
    r = client.post("/slots/0", params={"action": "erase"})
    assert r.status_code == 200, r.text
    r = client.post("/slots/0", params={"action": "restore"}, json={"filename": "slot0.bin"})
    assert r.status_code == 200, r.text
    assert r.json()["n_restored"] >= len(prompt)
    restored = _complete(client, follow, 32, id_slot=0, cache_prompt=True)
    return live["tokens"], restored["tokens"], live["timings"]["prompt_n"], restored["timings"]["prompt_n"]


@pytest.mark.build
@pytest.mark.slow
@pytest.mark.parametrize("score_type", ["q4_0", "f16"])
def test_restored_slot_continues_exactly_as_the_unsaved_one(patched_build: builds.Build, model: Path,
                                                             tmp_path: Path, text_tokens: list[int],
                                                             score_type: str) -> None:
    """Sparse-K on every ubatch with a score copy; a 600-token prompt (K=64 keeps a fraction). The continuation
    after restore evaluates only the tokens past the saved state (so it really runs on the restored cells and their
    score copy, derived from K on load) and is token for token the one the slot gave before it was erased."""
    save_dir = tmp_path / "slots"
    save_dir.mkdir()
    settings = SPARSE.replace(score_type=score_type, max_ubatch=0)
    config = server.ServerConfig(sparsek=settings, ctx=2048, parallel=2, threads=THREADS,
                                 extra=("--slot-save-path", str(save_dir), "--cache-ram", "0"))
    with _server(patched_build, model, tmp_path, config) as (_, client):
        live, restored, n_live, n_restored = _slot_state_continuation(client, text_tokens[:600])
        assert (save_dir / "slot0.bin").is_file()
        assert n_live == n_restored < 16, (n_live, n_restored)  # the cache was reused, not recomputed
        assert restored == live, f"first divergence at {load.first_divergence(live, restored)}"
        assert server.leaks(client) == []


@pytest.mark.build
@pytest.mark.slow
def test_context_shift_with_the_score_copy(patched_build: builds.Build, model: Path, tmp_path: Path,
                                           text_tokens: list[int]) -> None:
    """A 1-slot context of 256 and 400 tokens to generate: llama-server shifts the context (K and the score copy
    take the same RoPE shift) and keeps going. With an f16 copy, which holds exactly K, the answer is token for
    token the one that scores from K itself; with q4_0 it completes."""
    prompt = text_tokens[:120]
    answers = {}
    for score_type in ("none", "f16", "q4_0"):
        config = server.ServerConfig(sparsek=SPARSE.replace(score_type=score_type, max_ubatch=0), ctx=256, parallel=1,
                                     threads=THREADS, extra=("--context-shift",))
        with _server(patched_build, model, tmp_path, config, name=f"shift-{score_type}") as (_, client):
            body = _complete(client, prompt, 400, cache_prompt=False)
            assert body["truncated"] is True
            assert len(body["tokens"]) == 400
            assert server.leaks(client) == []
            answers[score_type] = body["tokens"]
        assert "slot context shift" in (tmp_path / f"shift-{score_type}.log").read_text()
    assert answers["f16"] == answers["none"], load.first_divergence(answers["f16"], answers["none"])


@pytest.mark.build
@pytest.mark.slow
def test_sparsek_fields_in_a_request_are_ignored(patched_build: builds.Build, model: Path, tmp_path: Path,
                                                 text_tokens: list[int]) -> None:
    """Sparse-K is a setting of the server (its flags or the model's metadata), not of a request: llama-server's
    request schema evaluates the fields it knows and ignores the rest, so "sparsek" fields, well-formed or not, change
    nothing (same tokens, same /props) and are no error. POST /props is refused (501) without --props."""
    config = server.ServerConfig(sparsek=POLICIES["every-ubatch"], ctx=1024, parallel=1, threads=THREADS)
    prompt = text_tokens[:300]
    tries: list[dict[str, Any]] = [{"sparsek": {"top_k": 0}}, {"sparsek": {"top_k": -5, "mode": "diagonal"}},
                                   {"sparsek": "nonsense"}, {"sparsek_topk": -1, "sparsek_mode": 3}]
    with _server(patched_build, model, tmp_path, config) as (_, client):
        before = server.props(client)["sparsek"]
        base = _complete(client, prompt, 12, cache_prompt=False)["tokens"]
        for extra in tries:
            assert _complete(client, prompt, 12, cache_prompt=False, **extra)["tokens"] == base, extra
            r = client.post("/v1/completions", json={"prompt": prompt, "max_tokens": 12, "temperature": 0,
                                                     "cache_prompt": False, **extra})
            assert r.status_code == 200, (extra, r.text)
        assert server.props(client)["sparsek"] == before
        r = client.post("/props", json={"sparsek": {"top_k": 0}})
        assert r.status_code == 501, r.text
        assert server.props(client)["sparsek"] == before
