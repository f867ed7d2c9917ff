"""AsyncLLM: many concurrent streams over one engine, for servers.

Stage 5. Mirrors vllm/v1/engine/async_llm.py. vLLM splits the engine in two processes: the front
end (tokenize, validate, detokenize, stream) and the engine core (schedule, run the model). Here
the split is by thread, and the rule that makes it safe is the same: each half's state is touched
by one thread only.
  - event-loop thread: the Processor and the OutputProcessor (LLMEngine.make_core_requests,
    process_core_outputs, abort_front_end) and the per-request asyncio queues;
  - one worker thread at a time (asyncio.to_thread): the EngineCore. Requests to add or abort
    reach it through a FIFO (`_core_inbox`) that the worker drains before each step.
So `add_request` and `get_stats` never wait for a step to finish: the loop keeps serving HTTP
while a long step runs. A consumer that stops iterating (client disconnect, task cancel) aborts
its request; its KV blocks are freed when the worker drains the abort, before the next step.
`await abort(id)` returns once that has happened (it awaits a future; the loop stays free).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncGenerator
from typing import Any

from vllm_mini.core.sched.output import EngineCoreOutput
from vllm_mini.core.sched.scheduler import SchedulerStats
from vllm_mini.engine import EngineCoreRequest
from vllm_mini.engine.arg_utils import EngineArgs
from vllm_mini.engine.llm_engine import LLMEngine
from vllm_mini.engine.processor import PromptType
from vllm_mini.logger import init_logger
from vllm_mini.lora.request import LoRARequest
from vllm_mini.outputs import RequestOutput
from vllm_mini.sampling_params import SamplingParams

logger = init_logger(__name__)


class EngineDeadError(RuntimeError):
    """The engine loop crashed; every in-flight request gets this error."""


class AsyncLLM:
    def __init__(self, engine: LLMEngine) -> None:
        self.engine = engine
        self.queues: dict[str, asyncio.Queue[RequestOutput | BaseException]] = {}
        # (seq, "add", [EngineCoreRequest, ...]) or (seq, "abort", [core id, ...]), in order.
        # deque.append/popleft are atomic, so the loop thread appends while the worker pops.
        self._core_inbox: deque[tuple[int, str, list[Any]]] = deque()
        self._inbox_seq = 0
        # Written by the worker thread, read by the loop thread only after the step returns.
        self._core_busy = False
        self._applied_seq = 0
        # Loop-thread futures of `abort` calls, resolved once the core has applied their seq.
        self._waiters: list[tuple[int, asyncio.Future]] = []
        self._scheduler_stats: SchedulerStats = engine.engine_core.make_stats()
        self._wakeup: asyncio.Event | None = None
        self._loop_task: asyncio.Task | None = None
        self.errored: BaseException | None = None

    @classmethod
    def from_engine_args(cls, engine_args: EngineArgs) -> AsyncLLM:
        return cls(LLMEngine.from_engine_args(engine_args))

    @property
    def tokenizer(self):
        return self.engine.get_tokenizer()

    @property
    def model_config(self):
        return self.engine.model_config

    def _ensure_loop(self) -> None:
        if self._loop_task is None or self._loop_task.done():
            if self.errored is not None:
                raise EngineDeadError(f"engine loop died: {self.errored!r}")
            self._wakeup = asyncio.Event()
            self._loop_task = asyncio.get_running_loop().create_task(self._run_engine_loop())

    # ------------------------------------------------------------------ engine loop
    async def _run_engine_loop(self) -> None:
        try:
            while True:
                if not (self._core_inbox or self._core_busy):
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                core_outputs, stats = await asyncio.to_thread(self._core_step)
                outputs, reqs_to_abort = self.engine.process_core_outputs(core_outputs, stats)
                self._scheduler_stats = stats
                self._resolve_waiters()
                if reqs_to_abort:  # stop strings ended these; the core still holds them
                    self._send_to_core("abort", reqs_to_abort)
                for out in outputs:
                    queue = self.queues.get(out.request_id)
                    if queue is not None:
                        queue.put_nowait(out)
                        if out.finished:
                            self.queues.pop(out.request_id, None)
                await asyncio.sleep(0)  # let consumers and new requests in between steps
        except Exception as e:  # noqa: BLE001 - every waiter must hear about it
            logger.exception("engine loop crashed")
            self.errored = e
            for queue in self.queues.values():
                queue.put_nowait(EngineDeadError(f"engine loop died: {e!r}"))
            self.queues.clear()
            self._applied_seq = self._inbox_seq  # nothing will run any more: release waiters
            self._resolve_waiters()

    def _core_step(self) -> tuple[list[EngineCoreOutput], SchedulerStats]:
        """Worker thread: apply queued adds/aborts in order, then one engine-core step."""
        core = self.engine.engine_core
        while self._core_inbox:
            seq, kind, items = self._core_inbox.popleft()
            if kind == "add":
                for request in items:
                    core.add_request(request)
            else:
                core.abort_requests(items)
            self._applied_seq = seq
        outputs = core.step() if core.has_unfinished_requests() else []
        self._core_busy = core.has_unfinished_requests()
        return outputs, core.make_stats()

    # ------------------------------------------------------------------ requests
    async def add_request(
        self,
        request_id: str,
        prompt: PromptType,
        params: SamplingParams,
        priority: int = 0,
        lora_request: LoRARequest | None = None,
    ) -> asyncio.Queue:
        """Validate and enqueue; raises ValueError for bad input before anything is queued.
        Runs on the event loop and returns at once (the core picks the request up between
        steps)."""
        self._ensure_loop()
        if request_id in self.queues:
            raise ValueError(f"request_id {request_id!r} is already in use")
        core_requests: list[EngineCoreRequest] = self.engine.make_core_requests(
            request_id, prompt, params, priority=priority, lora_request=lora_request
        )
        queue: asyncio.Queue[RequestOutput | BaseException] = asyncio.Queue()
        self.queues[request_id] = queue
        self._send_to_core("add", core_requests)
        return queue

    def _send_to_core(self, kind: str, items: list[Any]) -> int:
        self._inbox_seq += 1
        self._core_inbox.append((self._inbox_seq, kind, items))
        if self._wakeup is not None:
            self._wakeup.set()
        return self._inbox_seq

    def _resolve_waiters(self) -> None:
        pending = []
        for seq, future in self._waiters:
            if seq <= self._applied_seq:
                if not future.done():
                    future.set_result(None)
            else:
                pending.append((seq, future))
        self._waiters = pending

    async def generate(
        self,
        prompt: PromptType,
        sampling_params: SamplingParams,
        request_id: str,
        priority: int = 0,
        lora_request: LoRARequest | None = None,
    ) -> AsyncGenerator[RequestOutput, None]:
        """Yield cumulative RequestOutputs for one request until it finishes."""
        queue = await self.add_request(request_id, prompt, sampling_params, priority, lora_request)
        async for out in self.iterate_outputs(request_id, queue):
            yield out

    async def iterate_outputs(
        self, request_id: str, queue: asyncio.Queue
    ) -> AsyncGenerator[RequestOutput, None]:
        """Stream a request that `add_request` already queued; abort it if the consumer leaves."""
        finished = False
        try:
            while not finished:
                out = await queue.get()
                if isinstance(out, BaseException):
                    raise out
                finished = out.finished
                yield out
        finally:
            if not finished:
                self.abort_nowait(request_id)

    async def abort(self, request_id: str | list[str]) -> None:
        """Abort and wait (without blocking the loop) until the core has freed the request: at
        most the rest of the step in flight."""
        seq = self.abort_nowait(request_id)
        if seq is not None and self._loop_task is not None and not self._loop_task.done():
            future = asyncio.get_running_loop().create_future()
            self._waiters.append((seq, future))
            await future

    def abort_nowait(self, request_id: str | list[str]) -> int | None:
        """Forget the request in the front end now; the core frees it before its next step.
        Synchronous, so it also works inside a cancelled task's cleanup. Returns the inbox
        sequence number of the abort (None if nothing was running)."""
        ids = [request_id] if isinstance(request_id, str) else list(request_id)
        for rid in ids:
            self.queues.pop(rid, None)
        core_ids = self.engine.abort_front_end(ids)
        return self._send_to_core("abort", core_ids) if core_ids else None

    def get_stats(self) -> dict[str, Any]:
        """Counters as of the last step (the core's own state is never read off its thread)."""
        self.engine.stats.scheduler = self._scheduler_stats
        return self.engine.stats.as_dict()

    async def check_health(self) -> None:
        if self.errored is not None:
            raise EngineDeadError(f"engine loop died: {self.errored!r}")

    def shutdown(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
