"""AsyncLLM: many concurrent streams over one engine, for servers.

Stage 5. Mirrors vllm/v1/engine/async_llm.py. vLLM splits the engine in two processes: the front
end (tokenize, validate, detokenize, stream) and the engine core (schedule, run the model). Here
the split is by thread, and the rule that makes it safe is the same: each half's state is touched
by one thread only.
  - event-loop thread: the Processor and the OutputProcessor (LLMEngine.make_core_requests,
    process_core_outputs, abort_front_end) and the per-request asyncio queues;
  - one engine thread, for the engine's whole life: the EngineCore. Requests to add or abort
    reach it through a FIFO (`_core_inbox`) that the worker drains before each step.
`from_engine_args` builds the engine on that same thread, so every torch kernel runs on one
thread. That is a speed rule, not a safety one: each thread that starts OpenMP parallel work gets
its own pool of OpenMP workers, and once the pools hold more threads than there are cores,
libgomp's idle workers stop spin-waiting and sleep. Every parallel region then pays a wake-up
(~35 us for a small op instead of ~7), and a batch-1 decode step took 23 ms instead of 16 on a
2-core machine (vLLM avoids it by running the core as its own process's main thread).
So `add_request` and `get_stats` never wait for a step to finish: the loop keeps serving HTTP
while a long step runs. A consumer that stops iterating (client disconnect, task cancel) aborts
its request; its KV blocks are freed when the worker drains the abort, before the next step.
`await abort(id)` returns once that has happened (it awaits a future; the loop stays free).
LoRA adapters (stage 9) change the same way: `add_lora` / `remove_lora` check in the front end,
then queue a change that the worker applies between two steps, and return once it has.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncGenerator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
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


class LoRAInUseError(ValueError):
    """remove_lora was asked for an adapter that unfinished requests still run with."""


@dataclass
class _LoRAChange:
    """One adapter change for the worker thread: `op` on `arg`, with its outcome written back.

    The worker writes `result`/`error` before its step returns; the loop thread reads them only
    after, so no lock is needed (the same hand-over as the step's outputs)."""

    op: str  # "add_lora", "remove_lora" or "list_loras"
    arg: Any = None
    result: Any = None
    error: BaseException | None = None
    applied: bool = False


def _engine_thread() -> ThreadPoolExecutor:
    """The one thread an engine core lives on (a pool of one keeps its thread until shutdown)."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="vllm-mini-engine-core")


class AsyncLLM:
    def __init__(self, engine: LLMEngine, engine_thread: ThreadPoolExecutor | None = None) -> None:
        """`engine_thread` is the thread that built `engine` (from_engine_args passes it); when
        the engine was built elsewhere a new thread steps it (correct, slower: see above)."""
        self.engine = engine
        self._engine_thread = engine_thread or _engine_thread()
        self.queues: dict[str, asyncio.Queue[RequestOutput | BaseException]] = {}
        # (seq, "add", [EngineCoreRequest, ...]) or (seq, "abort", [core id, ...]), in order;
        # (seq, "add_lora" | "remove_lora" | "list_loras", [_LoRAChange]) for adapters.
        # deque.append/popleft are atomic, so the loop thread appends while the worker pops.
        self._core_inbox: deque[tuple[int, str, list[Any]]] = deque()
        self._inbox_seq = 0
        # Written by the worker thread, read by the loop thread only after the step returns.
        self._core_busy = False
        self._applied_seq = 0
        # Loop-thread futures of `abort` calls, resolved once the core has applied their seq.
        self._waiters: list[tuple[int, asyncio.Future]] = []
        # Adapter id of each unfinished request that has one (loop thread): remove_lora refuses
        # an adapter that is still in use instead of pulling it from under a running request.
        self._request_loras: dict[str, int] = {}
        self._scheduler_stats: SchedulerStats = engine.engine_core.make_stats()
        self._wakeup: asyncio.Event | None = None
        self._loop_task: asyncio.Task | None = None
        self.errored: BaseException | None = None

    @classmethod
    def from_engine_args(cls, engine_args: EngineArgs) -> AsyncLLM:
        thread = _engine_thread()
        try:
            engine = thread.submit(LLMEngine.from_engine_args, engine_args).result()
        except BaseException:
            thread.shutdown(wait=False)
            raise
        return cls(engine, thread)

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
                core_outputs, stats = await asyncio.get_running_loop().run_in_executor(
                    self._engine_thread, self._core_step
                )
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
                            self._request_loras.pop(out.request_id, None)
                await asyncio.sleep(0)  # let consumers and new requests in between steps
        except Exception as e:  # noqa: BLE001 - every waiter must hear about it
            logger.exception("engine loop crashed")
            self.errored = e
            for queue in self.queues.values():
                queue.put_nowait(EngineDeadError(f"engine loop died: {e!r}"))
            self.queues.clear()
            self._request_loras.clear()
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
            elif kind == "abort":
                core.abort_requests(items)
            else:
                for change in items:
                    self._apply_lora_change(core, change)
            self._applied_seq = seq
        outputs = core.step() if core.has_unfinished_requests() else []
        self._core_busy = core.has_unfinished_requests()
        return outputs, core.make_stats()

    @staticmethod
    def _apply_lora_change(core, change: _LoRAChange) -> None:
        """Worker thread. A failure is the caller's (a file that vanished since the check, say):
        it goes back to whoever asked, and must not kill the loop every request depends on."""
        try:
            if change.op == "add_lora":
                core.add_lora(change.arg)
            elif change.op == "remove_lora":
                change.result = core.remove_lora(change.arg)
            else:
                change.result = core.list_loras()
        except Exception as e:  # noqa: BLE001 - handed back to the awaiting coroutine
            change.error = e
        change.applied = True

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
        if lora_request is not None:
            self._request_loras[request_id] = lora_request.lora_int_id
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
            self._request_loras.pop(rid, None)
        core_ids = self.engine.abort_front_end(ids)
        return self._send_to_core("abort", core_ids) if core_ids else None

    # ------------------------------------------------------------------ LoRA adapters
    async def add_lora(self, lora_request: LoRARequest) -> None:
        """Check an adapter and register it with the core; returns once the core has it.

        Raises ValueError (the Processor's message: a missing file, a rank above max_lora_rank,
        a module the model lacks, LoRA off) before anything reaches the core. The check reads
        the adapter on the event loop, as every request's check does; fine for the small files
        adapters are, and it keeps the Processor on one thread."""
        self._ensure_loop()
        self.engine.processor.check_lora(lora_request)
        try:
            await self._lora_change(_LoRAChange("add_lora", lora_request))
        except BaseException:
            # The core refused it: let the front end forget it too, so the two halves agree.
            self.engine.processor.forget_lora(lora_request.lora_int_id)
            raise

    async def remove_lora(self, lora_int_id: int) -> bool:
        """Unregister an adapter; False if the core did not know it.

        Refuses (LoRAInUseError) while unfinished requests use it: the core reloads an adapter
        from its registration whenever a step needs it, so removing one mid-request would fail
        that request's next step, and with it the whole batch. The check and the queued removal
        happen with no await in between, so no request of this adapter can slip in after the
        check and before the removal is queued; later ones re-register it through the Processor
        (which is why a server also stops accepting the adapter's name first)."""
        self._ensure_loop()
        users = [rid for rid, lid in self._request_loras.items() if lid == lora_int_id]
        if users:
            raise LoRAInUseError(
                f"LoRA adapter {lora_int_id} is in use by {len(users)} unfinished request(s) "
                f"(e.g. {users[0]!r}); retry once they finish"
            )
        self.engine.processor.forget_lora(lora_int_id)
        return await self._lora_change(_LoRAChange("remove_lora", lora_int_id))

    async def list_loras(self) -> list[LoRARequest]:
        """The adapters the core has registered, read on its own thread between two steps."""
        self._ensure_loop()
        return await self._lora_change(_LoRAChange("list_loras"))

    async def _lora_change(self, change: _LoRAChange) -> Any:
        """Queue a change behind every add/abort sent before it; wait until the worker applied
        it (at most the rest of the step in flight); return its result or raise its error."""
        seq = self._send_to_core(change.op, [change])
        future = asyncio.get_running_loop().create_future()
        self._waiters.append((seq, future))
        await future
        if not change.applied:  # the loop died first and released every waiter
            raise EngineDeadError(f"engine loop died: {self.errored!r}")
        if change.error is not None:
            raise change.error
        return change.result

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
        self.engine.shutdown()
        self._engine_thread.shutdown(wait=False)
