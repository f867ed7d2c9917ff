"""Executor: the engine core's one handle on all of its workers.

Stage 8. Mirrors vllm/v1/executor/abstract.py. The engine core never talks to a worker directly:
it asks the executor, which runs the same method on every worker (`collective_rpc`) and hands
back what the workers answered. Tensor- and pipeline-parallel ranks all execute every step (each
computes its share and they communicate among themselves), but only one of them reports the
sampled tokens: the first TP rank of the last pipeline stage (`output_rank`, as in vLLM).
Start-up is a collective too: every worker measures how many KV blocks fit in its own memory for
its own heads and layers, and the engine uses the smallest answer so every rank can hold every
block the scheduler hands out. Next: uniproc_executor.py.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from vllm_mini.config import VllmConfig
from vllm_mini.core.sched.output import GrammarOutput, ModelRunnerOutput, SchedulerOutput
from vllm_mini.logger import init_logger

if TYPE_CHECKING:
    from vllm_mini.worker.worker import Worker

logger = init_logger(__name__)

# A worker method's name, or a function called as fn(worker, *args) inside the worker.
RPCMethod = str | Callable[..., Any]


class WorkerDiedError(RuntimeError):
    """A worker process exited or failed; the executor has shut the others down."""


class Executor(ABC):
    @staticmethod
    def get_class(vllm_config: VllmConfig) -> type[Executor]:
        backend = vllm_config.parallel_config.distributed_executor_backend
        if backend == "uni":
            from vllm_mini.executor.uniproc_executor import UniProcExecutor

            return UniProcExecutor
        if backend == "ray":
            from vllm_mini.executor.ray_executor import RayDistributedExecutor

            return RayDistributedExecutor
        from vllm_mini.executor.multiproc_executor import MultiprocExecutor

        return MultiprocExecutor

    def __init__(self, vllm_config: VllmConfig) -> None:
        self.vllm_config = vllm_config
        self.parallel_config = vllm_config.parallel_config
        self._init_executor()

    @abstractmethod
    def _init_executor(self) -> None:
        """Start the workers and load the model on each."""

    @abstractmethod
    def collective_rpc(
        self, method: RPCMethod, args: tuple = (), unique_reply_rank: int | None = None
    ) -> list[Any]:
        """Run method(*args) on every worker; the answers in rank order (or only that rank's)."""

    @property
    def output_rank(self) -> int:
        """The worker whose ModelRunnerOutput the engine reads: last stage, first TP rank."""
        return self.parallel_config.world_size - self.parallel_config.tensor_parallel_size

    def determine_num_blocks(self) -> int:
        return min(self.collective_rpc("determine_num_blocks"))

    def initialize_cache(self, num_blocks: int) -> None:
        self.collective_rpc("initialize_cache", (num_blocks,))

    def execute_model(
        self,
        scheduler_output: SchedulerOutput,
        grammar_output: Future | GrammarOutput | None = None,
    ) -> ModelRunnerOutput:
        if (
            isinstance(grammar_output, Future)
            and self.parallel_config.distributed_executor_backend != "uni"
        ):
            # Token masks (stage 13) cross to the worker processes: a Future cannot be sent,
            # its result (a numpy array) can. In-process, the runner waits for it itself.
            grammar_output = grammar_output.result()
        return self.collective_rpc(
            "execute_model", (scheduler_output, grammar_output), unique_reply_rank=self.output_rank
        )[0]

    @property
    def driver_worker(self) -> Worker:
        """The in-process Worker; only the uni executor has one."""
        raise RuntimeError(
            f"the {self.parallel_config.distributed_executor_backend!r} executor runs its "
            "workers in other processes: there is no in-process worker or model runner to reach"
        )

    def _fail(self, reason: str) -> None:
        """A worker is gone: remember why (every later call re-raises it), stop the rest, raise."""
        self.failure = WorkerDiedError(f"{reason}; the engine has stopped all its workers")
        logger.error("%s", self.failure)
        self.shutdown()
        raise self.failure

    def shutdown(self) -> None:  # noqa: B027 - nothing to stop in-process; mp overrides it
        """Stop the workers; safe to call twice."""
