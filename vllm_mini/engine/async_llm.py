"""AsyncLLM: many concurrent streams over one engine, for servers.

Stage 5. Mirrors vllm/v1/engine/async_llm.py. One background task (the "engine loop") steps the
engine whenever there is work and routes each RequestOutput to the asyncio.Queue of its request;
`generate()` is an async generator that reads that queue. The engine step is blocking CPU/GPU
work, so it runs in a worker thread (asyncio.to_thread) while the event loop keeps serving HTTP.
Requests are added and aborted only between steps, under a lock, so the engine is never touched
by two threads at once. A consumer that stops iterating (client disconnect, task cancel) aborts
its request, and its KV blocks are freed at the next step boundary.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator
from typing import Any

from vllm_mini.engine.arg_utils import EngineArgs
from vllm_mini.engine.llm_engine import LLMEngine
from vllm_mini.engine.processor import PromptType
from vllm_mini.logger import init_logger
from vllm_mini.outputs import RequestOutput
from vllm_mini.sampling_params import SamplingParams

logger = init_logger(__name__)


class EngineDeadError(RuntimeError):
    """The engine loop crashed; every in-flight request gets this error."""


class AsyncLLM:
    def __init__(self, engine: LLMEngine) -> None:
        self.engine = engine
        self.queues: dict[str, asyncio.Queue[RequestOutput | BaseException]] = {}
        self._lock = threading.Lock()
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

    async def _run_engine_loop(self) -> None:
        try:
            while True:
                if not self.engine.has_unfinished_requests():
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                outputs = await asyncio.to_thread(self._locked_step)
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

    def _locked_step(self) -> list[RequestOutput]:
        with self._lock:
            return self.engine.step()

    async def add_request(
        self, request_id: str, prompt: PromptType, params: SamplingParams, priority: int = 0
    ) -> asyncio.Queue:
        """Validate and enqueue; raises ValueError for bad input before anything is queued."""
        self._ensure_loop()
        if request_id in self.queues:
            raise ValueError(f"request_id {request_id!r} is already in use")
        queue: asyncio.Queue[RequestOutput | BaseException] = asyncio.Queue()
        with self._lock:
            self.engine.add_request(request_id, prompt, params, priority=priority)
        self.queues[request_id] = queue
        self._wakeup.set()
        return queue

    async def generate(
        self,
        prompt: PromptType,
        sampling_params: SamplingParams,
        request_id: str,
        priority: int = 0,
    ) -> AsyncGenerator[RequestOutput, None]:
        """Yield cumulative RequestOutputs for one request until it finishes."""
        queue = await self.add_request(request_id, prompt, sampling_params, priority)
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
                await self.abort(request_id)

    async def abort(self, request_id: str | list[str]) -> None:
        ids = [request_id] if isinstance(request_id, str) else list(request_id)
        for rid in ids:
            self.queues.pop(rid, None)
        # Taking the lock waits for a running step to end: never abort mid-step.
        await asyncio.to_thread(self._locked_abort, ids)

    def _locked_abort(self, ids: list[str]) -> None:
        with self._lock:
            self.engine.abort_request(ids)

    def get_stats(self) -> dict[str, Any]:
        with self._lock:
            return self.engine.get_stats()

    async def check_health(self) -> None:
        if self.errored is not None:
            raise EngineDeadError(f"engine loop died: {self.errored!r}")

    def shutdown(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
