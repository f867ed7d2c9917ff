"""EngineCore: the loop at the centre of vLLM — schedule, execute, update.

Stage 5. Mirrors vllm/v1/engine/core.py. It knows nothing about text: requests come in as
validated token ids (`EngineCoreRequest`, built by the front end's Processor) and become the
core's own `Request`s, hashed block by block for prefix caching by the hasher the core owns;
results go out as token ids (`EngineCoreOutput`). In vLLM it runs in its own process, fed over
ZMQ, so tokenization and detokenization overlap with the GPU; here it runs in the caller's process
(AsyncLLM steps it in a worker thread), and the message types are kept so that split stays easy
to see. `snapshot()` is the read-only view that tools (the trace recorder, the visualizer) use.
Stage 8: the core reaches its workers through an Executor (executor/): one in-process worker, or
one process per tensor/pipeline rank; engine/core_client.py runs several cores (data parallel).
Next: llm_engine.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vllm_mini.attention.selector import apply_backend_constraints
from vllm_mini.config import VllmConfig
from vllm_mini.core.kv_cache_utils import get_request_block_hasher
from vllm_mini.core.sched.output import EngineCoreOutput, SchedulerOutput
from vllm_mini.core.sched.scheduler import Scheduler, SchedulerStats
from vllm_mini.engine import EngineCoreRequest
from vllm_mini.executor import Executor, WorkerDiedError
from vllm_mini.logger import init_logger
from vllm_mini.request import Request, RequestStatus
from vllm_mini.worker.worker import Worker

logger = init_logger(__name__)


@dataclass
class RequestSnapshot:
    request_id: str
    status: str
    num_prompt_tokens: int
    num_tokens: int
    num_computed_tokens: int
    block_ids: list[int]  # logical block i -> physical block block_ids[i]
    # Stage 10: [offset, length] of each image's placeholder span in the prompt.
    image_spans: list[list[int]] = field(default_factory=list)


@dataclass
class BlockSnapshot:
    block_id: int
    ref_cnt: int
    block_hash: object | None
    # A prefix-cache lookup of block_hash would return exactly this block.
    is_cached: bool


@dataclass
class EngineCoreSnapshot:
    """The core's state right after a step, copied out (tools never hold live objects)."""

    last_scheduler_output: SchedulerOutput | None
    requests: list[RequestSnapshot]  # running first, then waiting, in queue order
    blocks: list[BlockSnapshot]
    stats: SchedulerStats


class EngineCore:
    def __init__(self, vllm_config: VllmConfig) -> None:
        self.vllm_config = vllm_config
        # Before the scheduler and the block hasher exist (configs built without EngineArgs too).
        apply_backend_constraints(vllm_config)
        # Stage 8: the workers (one, in this process, or one process per TP/PP rank).
        self.model_executor = Executor.get_class(vllm_config)(vllm_config)
        self.num_blocks = self.model_executor.determine_num_blocks()
        self.model_executor.initialize_cache(self.num_blocks)
        self.scheduler = Scheduler(vllm_config, self.num_blocks)
        cache = vllm_config.cache_config
        # Each Request hashes its full blocks with this as its tokens arrive (prefix caching).
        self.request_block_hasher = (
            get_request_block_hasher(cache.block_size) if cache.enable_prefix_caching else None
        )
        self.last_scheduler_output: SchedulerOutput | None = None
        # Stage 8: set when a worker died; the core then refuses all work (vLLM's dead engine).
        self.errored: WorkerDiedError | None = None

    @property
    def worker(self) -> Worker:
        """The in-process worker (uni executor only; the mp executor raises a clear error)."""
        return self.model_executor.driver_worker

    def add_request(self, request: EngineCoreRequest) -> None:
        if self.errored is not None:
            raise self.errored
        if request.lora_request is not None:
            self.add_lora(request.lora_request)  # registered once; loaded into a slot when run
        self.scheduler.add_request(
            Request.from_engine_core_request(request, self.request_block_hasher)
        )

    def _lora_manager(self):
        return (
            None if self.vllm_config.lora_config is None else self.worker.model_runner.lora_manager
        )

    def add_lora(self, lora_request) -> None:
        manager = self._lora_manager()
        if manager is None:
            raise ValueError("LoRA is off: start the engine with enable_lora=True")
        manager.add_adapter(lora_request)

    def remove_lora(self, lora_int_id: int) -> bool:
        manager = self._lora_manager()
        return manager is not None and manager.remove_adapter(lora_int_id)

    def list_loras(self) -> list:
        manager = self._lora_manager()
        return [] if manager is None else manager.list_adapters()

    def abort_requests(self, request_ids: list[str]) -> None:
        self.scheduler.finish_requests(request_ids, RequestStatus.FINISHED_ABORTED)

    def step(self) -> list[EngineCoreOutput]:
        if not self.scheduler.has_requests():
            return []
        if self.errored is not None:
            raise self.errored
        scheduler_output = self.scheduler.schedule()
        self.last_scheduler_output = scheduler_output
        # Stage 13: constrained requests' token masks are filled on a helper thread while the
        # forward pass runs; the runner waits for them only when it samples.
        grammar_output = self.scheduler.get_grammar_bitmask(scheduler_output)
        try:
            runner_output = self.model_executor.execute_model(scheduler_output, grammar_output)
        except WorkerDiedError as e:  # fail every request and free its blocks; stay dead
            self.errored = e
            sched = self.scheduler
            self.abort_requests([r.request_id for r in [*sched.running, *sched.waiting]])
            raise
        return self.scheduler.update_from_output(scheduler_output, runner_output)

    def shutdown(self) -> None:
        self.model_executor.shutdown()

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_requests()

    def get_num_unfinished_requests(self) -> int:
        return self.scheduler.get_num_unfinished_requests()

    def make_stats(self) -> SchedulerStats:
        return self.scheduler.make_stats()

    def reset_prefix_cache(self) -> bool:
        return self.scheduler.kv_cache_manager.reset_prefix_cache()

    def snapshot(self) -> EngineCoreSnapshot:
        scheduler = self.scheduler
        kv = scheduler.kv_cache_manager
        requests = [
            RequestSnapshot(
                request_id=r.request_id,
                status=r.status.name,
                num_prompt_tokens=r.num_prompt_tokens,
                num_tokens=r.num_tokens,
                num_computed_tokens=r.num_computed_tokens,
                block_ids=kv.get_block_ids(r.request_id),
                image_spans=[[f.mm_position.offset, f.mm_position.length] for f in r.mm_features],
            )
            for r in [*scheduler.running, *scheduler.waiting]
        ]
        pool = kv.block_pool
        blocks = [
            BlockSnapshot(
                block_id=b.block_id,
                ref_cnt=b.ref_cnt,
                block_hash=b.block_hash,
                is_cached=b.block_hash is not None and pool.get_cached_block(b.block_hash) is b,
            )
            for b in pool.blocks
        ]
        return EngineCoreSnapshot(self.last_scheduler_output, requests, blocks, self.make_stats())
