"""Concurrent clients against llama-server's /completion (httpx, asyncio): what each request got back (token ids,
time to first token, latency), the same requests served one at a time for reference, and the summary figures
(tokens/s, p50/p95) and agreement measure (first position where two answers' tokens differ)."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx


@dataclass(frozen=True)
class Request:
    """One completion: a prompt given as token ids (its length is exact), greedy, exactly n_predict tokens."""
    prompt: tuple[int, ...]
    n_predict: int
    stream: bool
    # off: an answer never depends on what an earlier request left in a slot, so a request served under load and
    # the same request served alone start from the same (empty) cache. On for a long shared prefix (workload's
    # shared_prefix): the server computes it once and reuses it (slot or RAM prompt cache), as a chat over one
    # long document does
    cache_prompt: bool = False

    def body(self) -> dict[str, Any]:
        return {"prompt": list(self.prompt), "n_predict": self.n_predict, "temperature": 0.0, "top_k": 1,
                "seed": 1, "ignore_eos": True, "cache_prompt": self.cache_prompt, "return_tokens": True,
                "stream": self.stream}


@dataclass
class Outcome:
    index: int
    stream: bool
    n_prompt: int
    ok: bool = False
    error: str = ""
    n_predicted: int = 0          # as the server counts them
    text: str = ""
    # the token ids; complete when not streamed: a stream leaves out the id of a token whose text ends inside a
    # UTF-8 character (llama-server sends text only once it is valid UTF-8, and each chunk names one token)
    tokens: list[int] = field(default_factory=list)
    ttft_s: float | None = None   # streaming only: request sent -> first generated token received
    latency_s: float = 0.0        # request sent -> last byte of the answer


@dataclass
class Run:
    outcomes: list[Outcome]
    wall_s: float
    clients: int


async def _stream(client: httpx.AsyncClient, req: Request, out: Outcome, t0: float) -> None:
    # llama-server can close the connection after a streamed answer while the client's pool still holds it as
    # kept alive: the next request sent on it then fails before the server sees it ("Server disconnected without
    # sending a response", reproduced with Sparse-K off). A streamed request therefore gets a connection of its own.
    async with client.stream("POST", "/completion", json=req.body(), headers={"Connection": "close"}) as r:
        if r.status_code != 200:
            out.error = f"HTTP {r.status_code}: {(await r.aread()).decode(errors='replace')[:300]}"
            return
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            chunk = json.loads(line[len("data: "):])
            if "error" in chunk:
                out.error = json.dumps(chunk["error"])[:300]
                return
            if chunk.get("tokens") and out.ttft_s is None:
                out.ttft_s = time.perf_counter() - t0
            out.tokens += [int(t) for t in chunk.get("tokens", [])]
            out.text += chunk.get("content", "")
            if chunk.get("stop"):
                out.n_predicted = int(chunk.get("tokens_predicted", 0))
                out.ok = True


async def send(client: httpx.AsyncClient, index: int, req: Request) -> Outcome:
    """One request; a transport error, an HTTP error or an error in the stream is a failed Outcome, never raised."""
    out = Outcome(index=index, stream=req.stream, n_prompt=len(req.prompt))
    t0 = time.perf_counter()
    try:
        if req.stream:
            await _stream(client, req, out, t0)
        else:
            r = await client.post("/completion", json=req.body())
            if r.status_code != 200:
                out.error = f"HTTP {r.status_code}: {r.text[:300]}"
            else:
                body = r.json()
                out.tokens = [int(t) for t in body.get("tokens", [])]
                out.text = body.get("content", "")
                out.n_predicted = int(body.get("tokens_predicted", 0))
                out.ok = True
    except (httpx.HTTPError, json.JSONDecodeError) as exc:
        out.error = f"{type(exc).__name__}: {exc}"
    out.latency_s = time.perf_counter() - t0
    if out.ok and out.n_predicted != req.n_predict:
        out.ok, out.error = False, f"{out.n_predicted} tokens, expected {req.n_predict}"
    return out


async def _run(url: str, requests: Sequence[Request], clients: int, timeout_s: float) -> Run:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(requests)):
        queue.put_nowait(i)
    outcomes: list[Outcome | None] = [None] * len(requests)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async with httpx.AsyncClient(base_url=url, timeout=timeout_s, limits=limits) as client:
        async def worker() -> None:
            while True:
                try:
                    i = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                outcomes[i] = await send(client, i, requests[i])

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - t0
    return Run([o for o in outcomes if o is not None], wall, clients)


def run(url: str, requests: Sequence[Request], clients: int, timeout_s: float = 600.0) -> Run:
    """`clients` concurrent clients, each sending the next unsent request as soon as its previous one is answered."""
    return asyncio.run(_run(url, requests, clients, timeout_s))


def run_alone(url: str, requests: Sequence[Request], timeout_s: float = 600.0) -> Run:
    """The same requests one at a time: each is the only one the server has."""
    return run(url, requests, 1, timeout_s)


# -- figures ----------------------------------------------------------------------------------------------------

def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), -(-len(ordered) * q // 100)))
    return ordered[int(rank) - 1]


@dataclass(frozen=True)
class Summary:
    requests: int
    failed: int
    clients: int
    wall_s: float
    prompt_tokens: int
    generated_tokens: int
    generated_tok_s: float        # generated tokens of every answered request / wall time
    total_tok_s: float            # (prompt + generated) / wall time
    ttft_p50_s: float | None      # streaming requests
    ttft_p95_s: float | None
    latency_p50_s: float | None   # every answered request
    latency_p95_s: float | None
    errors: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def summarize(r: Run) -> Summary:
    good = [o for o in r.outcomes if o.ok]
    gen = sum(o.n_predicted for o in good)
    prompt = sum(o.n_prompt for o in good)
    ttft = [o.ttft_s for o in good if o.ttft_s is not None]
    lat = [o.latency_s for o in good]
    return Summary(
        requests=len(r.outcomes), failed=len(r.outcomes) - len(good), clients=r.clients, wall_s=r.wall_s,
        prompt_tokens=prompt, generated_tokens=gen, generated_tok_s=gen / r.wall_s if r.wall_s else 0.0,
        total_tok_s=(gen + prompt) / r.wall_s if r.wall_s else 0.0,
        ttft_p50_s=percentile(ttft, 50), ttft_p95_s=percentile(ttft, 95),
        latency_p50_s=percentile(lat, 50), latency_p95_s=percentile(lat, 95),
        errors=tuple(f"#{o.index}: {o.error}" for o in r.outcomes if not o.ok))


def first_divergence(a: Sequence[int], b: Sequence[int]) -> int | None:
    """Index of the first token where a and b differ (the shorter length if one is a prefix of the other);
    None when they are identical."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


@dataclass(frozen=True)
class Agreement:
    """How answers under load compare with the same requests served alone (greedy): non-streamed answers by their
    token ids, streamed ones by their text (a stream does not name every token, see Outcome.tokens)."""
    compared: int
    identical: int
    divergences: tuple[int, ...]   # non-streamed answers that differ: the first differing token position of each
    streamed_compared: int
    streamed_identical: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def median_divergence(self) -> float | None:
        return statistics.median(self.divergences) if self.divergences else None


def agreement(loaded: Run, alone: Run) -> Agreement:
    ref = {o.index: o for o in alone.outcomes if o.ok}
    pairs = [(o, ref[o.index]) for o in loaded.outcomes if o.ok and o.index in ref]
    firsts = [first_divergence(a.tokens, b.tokens) for a, b in pairs if not a.stream]
    streamed = [a.text == b.text for a, b in pairs if a.stream]
    return Agreement(compared=len(firsts), identical=sum(f is None for f in firsts),
                     divergences=tuple(sorted(f for f in firsts if f is not None)),
                     streamed_compared=len(streamed), streamed_identical=sum(streamed))


def workload(text_tokens: Sequence[int], n: int, max_prompt: int, n_predict: Sequence[int], stream_every: int = 2,
             min_prompt: int = 16, seed: int = 0, shared_prefix: int = 0) -> list[Request]:
    """n requests over one tokenized text: prompt lengths spread evenly over [min_prompt, max_prompt] (shuffled),
    each from another place in the text, n_predict taken in turn from `n_predict`, every `stream_every`-th one
    streamed. shared_prefix > 0: every prompt starts with the text's first shared_prefix tokens (one long document
    that every request asks about; its own part comes after them) and the server may cache it (cache_prompt)."""
    import random

    rng = random.Random(seed)
    if n <= 0:
        return []
    if shared_prefix < 0:
        raise ValueError(f"shared_prefix must be >= 0, not {shared_prefix}")
    if len(text_tokens) < shared_prefix + max_prompt + 1:
        raise ValueError(f"the text has {len(text_tokens)} tokens, fewer than the shared prefix and the longest "
                         f"prompt ({shared_prefix} + {max_prompt})")
    step = (max_prompt - min_prompt) / max(1, n - 1)
    lengths = [round(min_prompt + i * step) for i in range(n)]
    rng.shuffle(lengths)
    prefix = tuple(text_tokens[:shared_prefix])
    out = []
    for i, length in enumerate(lengths):
        start = rng.randrange(shared_prefix, len(text_tokens) - length)
        out.append(Request(prompt=prefix + tuple(text_tokens[start:start + length]),
                           n_predict=n_predict[i % len(n_predict)], stream=i % stream_every == 0,
                           cache_prompt=shared_prefix > 0))
    return out
