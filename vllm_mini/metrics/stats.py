"""Statistics: per-request latencies and engine-wide counters.

Stage 5. Mirrors vllm/v1/metrics/stats.py. TTFT (time to first token) measures queueing plus
prefill; TPOT (time per output token) measures decode speed; e2e is the whole request. Engine-wide
counters (running/waiting, KV usage, prefix-cache hit rate, preemptions) come from the scheduler.
The server's /metrics endpoint and the periodic log line both read `EngineStats.as_dict()`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from vllm_mini.core.sched.scheduler import SchedulerStats
from vllm_mini.logger import init_logger
from vllm_mini.outputs import RequestOutput

logger = init_logger(__name__)


@dataclass
class FinishedRequestStats:
    ttft: float
    tpot: float
    e2e: float
    num_prompt_tokens: int
    num_generation_tokens: int
    finish_reason: str | None


@dataclass
class EngineStats:
    scheduler: SchedulerStats | None = None
    num_prompt_tokens: int = 0
    num_generation_tokens: int = 0
    num_finished_requests: int = 0
    finished: list[FinishedRequestStats] = field(default_factory=list)

    def record_finished(self, out: RequestOutput) -> FinishedRequestStats | None:
        m = out.metrics
        if m is None or m.finished_time is None or m.first_token_time is None:
            return None
        num_gen = sum(len(c.token_ids) for c in out.outputs)
        decode_time = (m.last_token_time or m.first_token_time) - m.first_token_time
        stats = FinishedRequestStats(
            ttft=m.first_token_time - m.arrival_time,
            tpot=decode_time / max(1, num_gen - 1),
            e2e=m.finished_time - m.arrival_time,
            num_prompt_tokens=len(out.prompt_token_ids),
            num_generation_tokens=num_gen,
            finish_reason=out.outputs[0].finish_reason if out.outputs else None,
        )
        self.finished.append(stats)
        self.num_finished_requests += 1
        return stats

    def as_dict(self) -> dict[str, float]:
        s = self.scheduler
        d: dict[str, float] = {
            "num_prompt_tokens": self.num_prompt_tokens,
            "num_generation_tokens": self.num_generation_tokens,
            "num_finished_requests": self.num_finished_requests,
        }
        if s is not None:
            d.update(
                num_running_reqs=s.num_running_reqs,
                num_waiting_reqs=s.num_waiting_reqs,
                kv_cache_usage=s.kv_cache_usage,
                prefix_cache_queries=s.prefix_cache_queries,
                prefix_cache_hits=s.prefix_cache_hits,
                prefix_cache_hit_rate=s.prefix_cache_hit_rate,
                num_preemptions=s.num_preemptions,
            )
            spec = s.spec_decoding
            if spec is not None:
                d.update(
                    spec_decode_num_drafts=spec.num_drafts,
                    spec_decode_num_draft_tokens=spec.num_draft_tokens,
                    spec_decode_num_accepted_tokens=spec.num_accepted_tokens,
                    spec_decode_acceptance_rate=spec.acceptance_rate,
                    spec_decode_mean_acceptance_length=spec.mean_acceptance_length,
                )
                for pos, n in enumerate(spec.num_accepted_tokens_per_pos):
                    d[f"spec_decode_num_accepted_tokens_pos{pos}"] = n
        if self.finished:
            for key in ("ttft", "tpot", "e2e"):
                values = [getattr(f, key) for f in self.finished]
                d[f"mean_{key}_s"] = sum(values) / len(values)
        return d


class LoggingStatLogger:
    """Logs one line of throughput and cache state every `interval` seconds (vLLM does every 5 s)."""

    def __init__(self, interval: float = 5.0) -> None:
        self.interval = interval
        self.last_time = time.monotonic()
        self.last_prompt = 0
        self.last_gen = 0

    def maybe_log(self, stats: EngineStats) -> None:
        now = time.monotonic()
        elapsed = now - self.last_time
        if elapsed < self.interval or stats.scheduler is None:
            return
        s = stats.scheduler
        logger.info(
            "prompt %.1f tok/s, generation %.1f tok/s, running %d, waiting %d, KV usage %.1f%%, "
            "prefix-cache hit rate %.1f%%, preemptions %d",
            (stats.num_prompt_tokens - self.last_prompt) / elapsed,
            (stats.num_generation_tokens - self.last_gen) / elapsed,
            s.num_running_reqs,
            s.num_waiting_reqs,
            100 * s.kv_cache_usage,
            100 * s.prefix_cache_hit_rate,
            s.num_preemptions,
        )
        if s.spec_decoding is not None and s.spec_decoding.num_drafts:
            logger.info("%s", s.spec_decoding.summary())
        self.last_time, self.last_prompt, self.last_gen = (
            now,
            stats.num_prompt_tokens,
            stats.num_generation_tokens,
        )
