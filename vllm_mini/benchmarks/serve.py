"""`vllm-mini bench serve`: load a running OpenAI-compatible server and measure its latency.

Stage 12. Mirrors vllm/benchmarks/serve.py (the driver and metrics) and
vllm/benchmarks/lib/endpoint_request_func.py (one streamed request). Requests arrive as a Poisson
process of rate R (exponential gaps, mean 1/R), the usual model of independent users; every request
is streamed, and the arrival time of each SSE chunk gives the four latencies vLLM reports:

- TTFT, time to first token: server-side queueing plus prefill, the wait before text appears.
- TPOT, time per output token after the first, (e2e - TTFT) / (output_tokens - 1): decode speed
  as one user sees it, averaged over that request.
- ITL, inter-token latency: every gap between two chunks, pooled over all requests. Its tail
  shows the stalls a decoding request suffers when other requests' prefills share its step.
- E2EL, end-to-end latency: request sent to stream finished.

`calculate_metrics` is a pure function of per-request records, so it is tested without a server.
Read next: vllm_mini/entrypoints/cli/benchmark.py (the command line), then vLLM's own
benchmarks/serve.py.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import asdict, dataclass, field

import httpx
import numpy as np

from vllm_mini.benchmarks.datasets import SampleRequest

# Connect and write fail fast; a read may legitimately wait minutes on a loaded server.
_TIMEOUT = httpx.Timeout(30.0, read=None, pool=None)


@dataclass
class RequestFuncOutput:
    """What the client saw of one request; times in seconds from the moment it was sent."""

    success: bool = False
    prompt_len: int = 0
    output_tokens: int = 0
    ttft: float = 0.0
    itl: list[float] = field(default_factory=list)
    latency: float = 0.0
    error: str = ""


@dataclass
class LatencyStats:
    """Summary of one latency over the successful requests, in milliseconds."""

    mean_ms: float
    median_ms: float
    p99_ms: float
    std_ms: float

    @classmethod
    def of(cls, seconds: list[float]) -> LatencyStats:
        if not seconds:  # e.g. no request produced two tokens, so TPOT is undefined
            return cls(0.0, 0.0, 0.0, 0.0)
        ms = np.asarray(seconds) * 1000.0
        return cls(
            float(ms.mean()), float(np.median(ms)), float(np.percentile(ms, 99)), float(ms.std())
        )


@dataclass
class BenchmarkMetrics:
    completed: int
    failed: int
    duration: float
    total_input: int
    total_output: int
    request_throughput: float
    output_throughput: float
    total_token_throughput: float
    ttft: LatencyStats
    tpot: LatencyStats
    itl: LatencyStats
    e2el: LatencyStats

    def to_json_dict(self) -> dict[str, float]:
        """Flat keys named as in vLLM's result files (`mean_ttft_ms`, `p99_itl_ms`, ...)."""
        flat: dict[str, float] = {}
        for name, value in asdict(self).items():
            if isinstance(value, dict):
                flat.update({f"{k[:-3]}_{name}_ms": v for k, v in value.items()})
            else:
                flat[name] = value
        return flat


@dataclass
class BenchmarkResult:
    metrics: BenchmarkMetrics
    outputs: list[RequestFuncOutput]


def calculate_metrics(outputs: list[RequestFuncOutput], duration: float) -> BenchmarkMetrics:
    """Aggregate per-request records; failed requests count only in `failed`."""
    ok = [o for o in outputs if o.success]
    total_input = sum(o.prompt_len for o in ok)
    total_output = sum(o.output_tokens for o in ok)
    # A single-token request has no decode phase, so it has no TPOT (as in vLLM).
    tpots = [(o.latency - o.ttft) / (o.output_tokens - 1) for o in ok if o.output_tokens > 1]
    return BenchmarkMetrics(
        completed=len(ok),
        failed=len(outputs) - len(ok),
        duration=duration,
        total_input=total_input,
        total_output=total_output,
        request_throughput=len(ok) / duration,
        output_throughput=total_output / duration,
        total_token_throughput=(total_input + total_output) / duration,
        ttft=LatencyStats.of([o.ttft for o in ok]),
        tpot=LatencyStats.of(tpots),
        itl=LatencyStats.of([gap for o in ok for gap in o.itl]),
        e2el=LatencyStats.of([o.latency for o in ok]),
    )


def arrival_times(num_requests: int, request_rate: float, seed: int) -> list[float]:
    """Send offsets (s) of a Poisson process: exponential gaps with mean 1/rate, first at 0.

    Absolute offsets, not sleeps between sends, so a late wake-up does not delay every later
    request. `inf` sends everything at once (vLLM's default), a pure throughput test.
    """
    if request_rate <= 0:
        raise ValueError(f"request_rate must be > 0 (or inf), got {request_rate}")
    if request_rate == float("inf"):
        return [0.0] * num_requests
    rng = random.Random(seed)
    times, t = [], 0.0
    for _ in range(num_requests):
        times.append(t)
        t += rng.expovariate(request_rate)
    return times


async def request_completion(
    client: httpx.AsyncClient, base_url: str, model: str, prompt: list[int], max_tokens: int
) -> RequestFuncOutput:
    """Stream one completion; every failure is recorded in the output, never raised."""
    payload = {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "ignore_eos": True,  # generate exactly max_tokens, so every run does the same work
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    out = RequestFuncOutput(prompt_len=len(prompt))
    text_chunks, usage_tokens, done = 0, None, False
    start = last = time.perf_counter()
    try:
        async with client.stream("POST", f"{base_url}/v1/completions", json=payload) as resp:
            if resp.status_code != 200:
                body = (await resp.aread()).decode(errors="replace")
                out.error = f"HTTP {resp.status_code}: {body[:300]}"
                return out
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue  # blank separators and SSE comments
                data = line[len("data:") :].strip()
                if data == "[DONE]":
                    done = True
                    break
                now = time.perf_counter()
                chunk = json.loads(data)
                if "error" in chunk:
                    out.error = f"server error mid-stream: {chunk['error']}"
                    return out
                choices = chunk.get("choices") or []
                # Only chunks carrying text count: a trailing finish_reason chunk is not a token.
                if choices and choices[0].get("text"):
                    if text_chunks == 0:
                        out.ttft = now - start
                    else:
                        out.itl.append(now - last)
                    last = now
                    text_chunks += 1
                if chunk.get("usage"):
                    usage_tokens = chunk["usage"]["completion_tokens"]
        out.latency = time.perf_counter() - start
    except Exception as e:  # a benchmark counts failures, it does not stop at the first one
        out.error = f"{type(e).__name__}: {e}"
        return out
    if not done or text_chunks == 0:
        out.error = "stream ended before [DONE]" if not done else "no text chunk received"
        return out
    # The usage chunk is exact; several tokens may share one chunk, so counting is a fallback.
    out.output_tokens = usage_tokens if usage_tokens is not None else text_chunks
    out.success = True
    return out


def make_client(base_url: str, api_key: str | None, max_connections: int) -> httpx.AsyncClient:
    """One pooled client; enough connections that no request waits for a socket (that wait
    would be counted as TTFT)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=None)
    return httpx.AsyncClient(headers=headers, timeout=_TIMEOUT, limits=limits)


async def benchmark(
    base_url: str,
    model: str,
    requests: list[SampleRequest],
    request_rate: float,
    max_concurrency: int | None = None,
    seed: int = 0,
    *,
    api_key: str | None = None,
    show_progress: bool = False,
) -> BenchmarkResult:
    """Send `requests` on a Poisson schedule of `request_rate` requests/s and time them.

    `max_concurrency` caps requests in flight: an arrival beyond the cap waits (FIFO) for a free
    slot. As in vLLM, a request's clock starts when it is sent, so that wait lengthens the
    benchmark (lower throughput) but not the request's TTFT or E2EL.
    """
    from tqdm import tqdm

    base_url = base_url.rstrip("/")
    offsets = arrival_times(len(requests), request_rate, seed)
    limit = max(1, max_concurrency or len(requests))
    slots = asyncio.Semaphore(limit)
    progress = tqdm(total=len(requests), disable=not show_progress, desc="requests")

    async with make_client(base_url, api_key, limit) as client:
        start = time.perf_counter()

        async def send(req: SampleRequest, offset: float) -> RequestFuncOutput:
            await asyncio.sleep(max(0.0, start + offset - time.perf_counter()))
            async with slots:
                out = await request_completion(
                    client, base_url, model, req.prompt_token_ids, req.expected_output_len
                )
            progress.update(1)
            return out

        outputs = await asyncio.gather(*(send(r, t) for r, t in zip(requests, offsets)))
        duration = time.perf_counter() - start
    progress.close()
    return BenchmarkResult(calculate_metrics(list(outputs), duration), list(outputs))


def format_report(
    metrics: BenchmarkMetrics, request_rate: float, max_concurrency: int | None
) -> str:
    """The text report, laid out like `vllm bench serve`'s."""
    rows: list[tuple[str, object]] = [
        ("Successful requests:", metrics.completed),
        ("Failed requests:", metrics.failed),
        ("Request rate configured (RPS):", f"{request_rate:.2f}"),
        ("Benchmark duration (s):", f"{metrics.duration:.2f}"),
        ("Total input tokens:", metrics.total_input),
        ("Total generated tokens:", metrics.total_output),
        ("Request throughput (req/s):", f"{metrics.request_throughput:.2f}"),
        ("Output token throughput (tok/s):", f"{metrics.output_throughput:.2f}"),
        ("Total token throughput (tok/s):", f"{metrics.total_token_throughput:.2f}"),
    ]
    if max_concurrency is not None:
        rows.insert(2, ("Maximum request concurrency:", max_concurrency))
    lines = ["{s:{c}^50}".format(s=" Serving Benchmark Result ", c="=")]
    lines += [f"{name:<40}{value!s:<10}" for name, value in rows]
    sections = [
        ("ttft", "TTFT", "Time to First Token"),
        ("tpot", "TPOT", "Time per Output Token (excl. 1st token)"),
        ("itl", "ITL", "Inter-token Latency"),
        ("e2el", "E2EL", "End-to-end Latency"),
    ]
    for attr, short, title in sections:
        stats: LatencyStats = getattr(metrics, attr)
        lines.append("{s:{c}^50}".format(s=title, c="-"))
        lines.append(f"{f'Mean {short} (ms):':<40}{stats.mean_ms:<10.2f}")
        lines.append(f"{f'Median {short} (ms):':<40}{stats.median_ms:<10.2f}")
        lines.append(f"{f'P99 {short} (ms):':<40}{stats.p99_ms:<10.2f}")
    lines.append("=" * 50)
    return "\n".join(lines)
