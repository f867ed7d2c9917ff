"""Prometheus metrics for GET /metrics, named as vLLM names them (`vllm:...`).

Stage 12. Mirrors the Prometheus half of vllm/v1/metrics/loggers.py (PrometheusStatLogger). Two
kinds of metric, fed two ways:

- engine state (running/waiting requests, KV-cache usage, prefix-cache counters, token totals) is
  read from `AsyncLLM.get_stats()` at scrape time by a custom collector, so a scrape always shows
  the state of that moment and nothing has to be pushed on every engine step;
- per-request latencies (TTFT, TPOT, end-to-end) and the finished-request counter are observed by
  the serving layer when it sees a request finish, from `RequestOutput.metrics` (timestamps the
  engine's OutputProcessor stamps on each request).

Every app gets its own CollectorRegistry: the global default registry would make two servers in
one process (as in the tests) collide on metric names. Next: api_server.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from vllm_mini.engine.async_llm import AsyncLLM
from vllm_mini.outputs import RequestOutput

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Bucket edges in seconds, spanning a fast GPU (ms) to a loaded CPU server (tens of seconds).
_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                 7.5, 10.0, 20.0, 40.0, 80.0)  # fmt: skip
_TPOT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75,
                 1.0, 2.5, 5.0, 10.0)  # fmt: skip
_E2E_BUCKETS = (0.01, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0,
                50.0, 60.0, 120.0, 240.0, 480.0)  # fmt: skip


class EngineStateCollector(Collector):
    """Gauges and engine-side counters, computed from `engine.get_stats()` on each scrape."""

    def __init__(self, engine: AsyncLLM, model_name: str) -> None:
        self.engine = engine
        self.model_name = model_name

    def collect(self) -> Iterator[Metric]:
        stats = self.engine.get_stats()
        gauges = (
            ("vllm:num_requests_running", "Requests in the running batch.", "num_running_reqs"),
            ("vllm:num_requests_waiting", "Requests waiting to be scheduled.", "num_waiting_reqs"),
            ("vllm:kv_cache_usage_perc", "KV-cache usage; 1 means 100%.", "kv_cache_usage"),
            (
                "vllm:prefix_cache_hit_rate",
                "Prefix-cache hits / queries, in tokens, since start.",
                "prefix_cache_hit_rate",
            ),
        )
        counters = (
            ("vllm:prompt_tokens", "Prompt tokens received.", "num_prompt_tokens"),
            ("vllm:generation_tokens", "Tokens generated.", "num_generation_tokens"),
            ("vllm:prefix_cache_queries", "Prompt tokens looked up in the cache.", "prefix_cache_queries"),
            ("vllm:prefix_cache_hits", "Prompt tokens found in the cache.", "prefix_cache_hits"),
            ("vllm:num_preemptions", "Requests preempted to free KV blocks.", "num_preemptions"),
        )  # fmt: skip
        for name, doc, key in gauges:
            family = GaugeMetricFamily(name, doc, labels=["model_name"])
            family.add_metric([self.model_name], float(stats.get(key, 0.0)))
            yield family
        if "spec_decode_num_drafts" in stats:  # vLLM's speculative-decoding counters
            counters += (
                ("vllm:spec_decode_num_drafts", "Draft sequences verified.", "spec_decode_num_drafts"),
                ("vllm:spec_decode_num_draft_tokens", "Draft tokens verified.", "spec_decode_num_draft_tokens"),
                ("vllm:spec_decode_num_accepted_tokens", "Draft tokens accepted.", "spec_decode_num_accepted_tokens"),
            )  # fmt: skip
        for name, doc, key in counters:
            family = CounterMetricFamily(name, doc, labels=["model_name"])
            family.add_metric([self.model_name], float(stats.get(key, 0)))
            yield family
        positions = sorted(k for k in stats if k.startswith("spec_decode_num_accepted_tokens_pos"))
        if positions:
            family = CounterMetricFamily(
                "vllm:spec_decode_num_accepted_tokens_per_pos",
                "Draft tokens accepted, by position in the draft.",
                labels=["model_name", "position"],
            )
            for key in positions:
                pos = key.removeprefix("spec_decode_num_accepted_tokens_pos")
                family.add_metric([self.model_name, pos], float(stats[key]))
            yield family


class ServerMetrics:
    def __init__(self, engine: AsyncLLM, model_name: str) -> None:
        self.registry = CollectorRegistry()
        self.model_name = model_name
        self.registry.register(EngineStateCollector(engine, model_name))
        labels = ["model_name"]
        self.request_success = Counter(
            "vllm:request_success",
            "Requests finished, by finish reason (stop, length, abort).",
            labels + ["finished_reason"],
            registry=self.registry,
        )
        self.ttft = Histogram(
            "vllm:time_to_first_token_seconds",
            "Arrival to first token: queueing plus prefill.",
            labels,
            buckets=_TTFT_BUCKETS,
            registry=self.registry,
        )
        self.tpot = Histogram(
            "vllm:time_per_output_token_seconds",
            "Mean time between output tokens of one request, after the first.",
            labels,
            buckets=_TPOT_BUCKETS,
            registry=self.registry,
        )
        self.e2e = Histogram(
            "vllm:e2e_request_latency_seconds",
            "Arrival to last token.",
            labels,
            buckets=_E2E_BUCKETS,
            registry=self.registry,
        )

    def observe_finished(self, out: RequestOutput) -> None:
        """Record one finished prompt (all of its n samples)."""
        for completion in out.outputs:
            self.request_success.labels(self.model_name, completion.finish_reason or "abort").inc()
        m = out.metrics
        if m is None or m.first_token_time is None or m.finished_time is None:
            return
        self.ttft.labels(self.model_name).observe(m.first_token_time - m.arrival_time)
        self.e2e.labels(self.model_name).observe(m.finished_time - m.arrival_time)
        # The n samples decode side by side, so a step per token of the longest one.
        num_tokens = max((len(c.token_ids) for c in out.outputs), default=0)
        if num_tokens > 1 and m.last_token_time is not None:
            decode_time = m.last_token_time - m.first_token_time
            self.tpot.labels(self.model_name).observe(decode_time / (num_tokens - 1))

    def observe_aborted(self, num_samples: int) -> None:
        """Requests the server aborted (client gone) never finish in the engine's outputs."""
        if num_samples:
            self.request_success.labels(self.model_name, "abort").inc(num_samples)

    async def render(self) -> bytes:
        # get_stats() takes the engine lock, held during a step: wait for it off the event loop.
        return await asyncio.to_thread(generate_latest, self.registry)
