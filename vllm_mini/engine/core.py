"""EngineCore: the loop at the centre of vLLM — schedule, execute, update.

Stage 5. Mirrors vllm/v1/engine/core.py. It knows nothing about text: requests come in as token
ids (`Request`), results go out as token ids (`EngineCoreOutput`). In vLLM it runs in its own
process, fed over ZMQ, so tokenization and detokenization overlap with the GPU; here it runs in
the caller's process, and the message types are kept so that split stays easy to see.
Next: llm_engine.py.
"""

from __future__ import annotations

from vllm_mini.config import VllmConfig
from vllm_mini.core.sched.output import EngineCoreOutput, SchedulerOutput
from vllm_mini.core.sched.scheduler import Scheduler, SchedulerStats
from vllm_mini.logger import init_logger
from vllm_mini.request import Request, RequestStatus
from vllm_mini.worker.worker import Worker

logger = init_logger(__name__)


class EngineCore:
    def __init__(self, vllm_config: VllmConfig) -> None:
        self.vllm_config = vllm_config
        self.worker = Worker(vllm_config)
        self.worker.load_model()
        self.num_blocks = self.worker.determine_num_blocks()
        self.worker.initialize_cache(self.num_blocks)
        self.scheduler = Scheduler(vllm_config, self.num_blocks)
        # The last step's schedule, for tracing and teaching (see core/kv_events.py).
        self.last_scheduler_output: SchedulerOutput | None = None

    @property
    def block_hasher(self):
        return self.scheduler.block_hasher

    def add_request(self, request: Request) -> None:
        self.scheduler.add_request(request)

    def abort_requests(self, request_ids: list[str]) -> None:
        self.scheduler.finish_requests(request_ids, RequestStatus.FINISHED_ABORTED)

    def step(self) -> list[EngineCoreOutput]:
        if not self.scheduler.has_requests():
            return []
        scheduler_output = self.scheduler.schedule()
        self.last_scheduler_output = scheduler_output
        runner_output = self.worker.execute_model(scheduler_output)
        return self.scheduler.update_from_output(scheduler_output, runner_output)

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_requests()

    def get_num_unfinished_requests(self) -> int:
        return self.scheduler.get_num_unfinished_requests()

    def make_stats(self) -> SchedulerStats:
        return self.scheduler.make_stats()

    def reset_prefix_cache(self) -> bool:
        return self.scheduler.kv_cache_manager.reset_prefix_cache()
