"""UniProcExecutor: the one worker runs in the engine core's own process.

Stage 8 (the path every earlier stage took). Mirrors vllm/v1/executor/uniproc_executor.py. There
is no communication: `collective_rpc` is a method call, and the Worker stays reachable as
`driver_worker` (LoRA, the visualizer and tests read its model runner). Next:
multiproc_executor.py.
"""

from __future__ import annotations

from typing import Any

from vllm_mini.executor.abstract import Executor, RPCMethod
from vllm_mini.worker.worker import Worker


class UniProcExecutor(Executor):
    def _init_executor(self) -> None:
        self.worker = Worker(self.vllm_config)
        self.worker.load_model()

    def collective_rpc(
        self, method: RPCMethod, args: tuple = (), unique_reply_rank: int | None = None
    ) -> list[Any]:
        fn = getattr(self.worker, method) if isinstance(method, str) else None
        return [fn(*args) if fn else method(self.worker, *args)]

    @property
    def driver_worker(self) -> Worker:
        return self.worker
