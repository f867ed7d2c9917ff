"""Step trace: a JSON-able record of what the scheduler and the KV cache did at every step.

Stage 4-5 teaching tool (the Streamlit visualizer in app/ replays it). vLLM publishes similar
facts as KV-cache events (vllm/distributed/kv_events.py: BlockStored / BlockRemoved) and scheduler
stats; here one recorder reads the core's public snapshot (EngineCore.snapshot) after each step: who was scheduled and with how many
tokens (a prefill chunk or a decode), who was preempted or finished, every request's block table,
the state of every physical block (free / owned with ref count / cached-evictable with its hash),
KV usage and the prefix-cache hit rate. Off by default: the engine calls it only when attached.

Stage 11 adds speculative decoding: per request, how many draft tokens a step verified, how many
the rejection sampler accepted, and how many were rejected. The rejected drafts' KV was written
this step (the target ran on them) but `num_computed_tokens` was rolled back past it
(core/sched/scheduler.py `update_from_output`), so those slots hold stale KV until the next step
overwrites them. vLLM publishes the same counts as SpecDecodingStats
(vllm/v1/spec_decode/metrics.py).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vllm_mini.engine.core import RequestSnapshot
    from vllm_mini.engine.llm_engine import LLMEngine


@dataclass
class RequestTrace:
    request_id: str
    status: str
    num_prompt_tokens: int
    num_tokens: int
    num_computed_tokens: int
    block_ids: list[int]  # logical block i -> physical block block_ids[i]
    scheduled_tokens: int  # this step; 0 if not scheduled
    kind: str  # "prefill", "decode" or "idle"
    text: str
    # Speculative decoding (stage 11); defaults keep traces recorded before it loadable.
    spec_tokens: int = 0  # draft tokens verified this step (scheduled after the last token)
    accepted_tokens: int = 0  # drafts the rejection sampler kept (tokens generated - 1)
    # Drafts rejected: their KV sits in slots num_computed_tokens .. + rejected_tokens - 1.
    rejected_tokens: int = 0
    # Stage 10: [offset, length] of each image's placeholder span (the core snapshot's field).
    image_spans: list[list[int]] = field(default_factory=list)


@dataclass
class StepTrace:
    step: int
    scheduled: dict[str, int]
    new_request_ids: list[str]
    preempted_ids: list[str]
    finished_ids: list[str]  # finished (or stopped by a stop string) during this step
    requests: list[RequestTrace]
    # One entry per physical block: [state, ref_cnt, hash prefix]; state is free/owned/cached.
    blocks: list[tuple[str, int, str]]
    kv_usage: float
    num_running: int
    num_waiting: int
    prefix_cache_queries: int
    prefix_cache_hits: int
    num_preemptions: int
    # Final text of the requests in `finished_ids` (they are gone from `requests`).
    finished_texts: dict[str, str] = field(default_factory=dict)
    # Request id -> draft tokens verified this step, finished requests included (stage 11).
    spec_decode_tokens: dict[str, int] = field(default_factory=dict)


@dataclass
class Trace:
    block_size: int
    num_blocks: int
    model: str
    steps: list[StepTrace] = field(default_factory=list)
    # Free-form run settings (token budget, max_num_seqs, prompts...) for whoever replays it.
    settings: dict[str, Any] = field(default_factory=dict)
    # The engine's SpeculativeConfig as a dict (method, num_speculative_tokens...); None = off.
    speculative_config: dict[str, Any] | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json())

    @classmethod
    def from_json(cls, text: str) -> Trace:
        data: dict[str, Any] = json.loads(text)
        steps = []
        for s in data.pop("steps"):
            s["requests"] = [RequestTrace(**r) for r in s["requests"]]
            s["blocks"] = [tuple(b) for b in s["blocks"]]
            steps.append(StepTrace(**s))
        return cls(steps=steps, **data)

    @classmethod
    def load(cls, path: str | Path) -> Trace:
        return cls.from_json(Path(path).read_text())


def _hash_prefix(block_hash: Any) -> str:
    if block_hash is None:
        return ""
    raw = block_hash if isinstance(block_hash, bytes) else repr(block_hash).encode()
    return raw.hex()[:8]


class TraceRecorder:
    """Attach with `engine.trace_recorder = TraceRecorder(engine)`; LLMEngine.step calls `record`."""

    def __init__(self, engine: LLMEngine) -> None:
        core = engine.engine_core
        self.engine = engine
        self.trace = Trace(
            block_size=engine.vllm_config.cache_config.block_size,
            num_blocks=core.num_blocks,
            model=str(engine.model_config.model),
        )
        spec = engine.vllm_config.speculative_config
        if spec is not None:
            self.trace.speculative_config = asdict(spec)
        # Live detokenizers by request id; the output processor drops a request's state when it
        # finishes, so we keep the reference to read its final text after that step.
        self._detokenizers: dict[str, Any] = {}
        # Token count of each request when we last saw it = its length before the next step.
        self._num_tokens_before: dict[str, int] = {}

    def record(self, finished_ids: list[str]) -> StepTrace | None:
        """Snapshot the engine right after a step; `finished_ids` ended during that step."""
        snap = self.engine.engine_core.snapshot()
        so = snap.last_scheduler_output
        if so is None:
            return None
        # Text so far, from the output processor's live detokenizers. A request that is added and
        # finishes within one step is never seen live: its final text stays unknown ("").
        for child_id, detokenizer in self.engine.output_processor.detokenizers().items():
            self._detokenizers[child_id] = detokenizer
        new_ids = [r.req_id for r in so.scheduled_new_reqs]
        requests = []
        for request in snap.requests:
            rid = request.request_id
            n = so.num_scheduled_tokens.get(rid, 0)
            spec = len(so.scheduled_spec_decode_tokens.get(rid, ()))
            accepted = rejected = 0
            if spec and request.status == "RUNNING":
                # Generated this step = accepted drafts + the token sampled after them.
                generated = request.num_tokens - self._num_tokens_before.get(
                    rid, request.num_tokens
                )
                accepted = min(max(generated - 1, 0), spec)
                rejected = spec - accepted
            kind = self._kind(request, n, rejected)
            self._num_tokens_before[rid] = request.num_tokens
            requests.append(
                RequestTrace(
                    **asdict(request),  # the core's snapshot fields, then what the trace adds
                    scheduled_tokens=n,
                    kind=kind,
                    text=self._text(rid),
                    spec_tokens=spec,
                    accepted_tokens=accepted,
                    rejected_tokens=rejected,
                )
            )
        blocks = []
        for block in snap.blocks:
            if block.ref_cnt > 0:
                state = "owned"
            elif block.is_cached:
                state = "cached"  # a prefix-cache lookup would find exactly this block
            else:
                state = "free"
            blocks.append((state, block.ref_cnt, _hash_prefix(block.block_hash)))
        stats = snap.stats
        step = StepTrace(
            step=len(self.trace.steps),
            scheduled=dict(so.num_scheduled_tokens),
            new_request_ids=new_ids,
            preempted_ids=sorted(so.preempted_req_ids),
            finished_ids=sorted(finished_ids),
            requests=requests,
            blocks=blocks,
            kv_usage=stats.kv_cache_usage,
            num_running=stats.num_running_reqs,
            num_waiting=stats.num_waiting_reqs,
            prefix_cache_queries=stats.prefix_cache_queries,
            prefix_cache_hits=stats.prefix_cache_hits,
            num_preemptions=stats.num_preemptions,
            finished_texts={rid: self._text(rid) for rid in finished_ids},
            spec_decode_tokens={
                rid: len(drafts) for rid, drafts in so.scheduled_spec_decode_tokens.items()
            },
        )
        for rid in finished_ids:
            self._detokenizers.pop(rid, None)
            self._num_tokens_before.pop(rid, None)
        self.trace.steps.append(step)
        return step

    def _text(self, request_id: str) -> str:
        detokenizer = self._detokenizers.get(request_id)
        return detokenizer.output_text if detokenizer is not None else ""

    def _kind(self, request: RequestSnapshot, num_scheduled: int, num_rejected: int = 0) -> str:
        """prefill (a prompt chunk, or a recompute after preemption), decode, or idle.

        A step that verifies drafts is a decode too: it schedules 1 + k tokens (the last token,
        then k drafts), and afterwards num_computed_tokens was rolled back by the rejected ones.
        """
        if num_scheduled == 0:
            return "idle"
        # The scheduler advanced num_computed_tokens by num_scheduled, then rolled back the
        # rejected drafts: undo both to get the count at the start of the step.
        before = request.num_computed_tokens + num_rejected - num_scheduled
        num_tokens = self._num_tokens_before.get(request.request_id, request.num_prompt_tokens)
        # Decode = computing the one newest *generated* token; a preempted request recomputing its
        # earlier outputs is still a prefill, even though those tokens lie past the prompt.
        is_decode = before == num_tokens - 1 and num_tokens > request.num_prompt_tokens
        return "decode" if is_decode else "prefill"
