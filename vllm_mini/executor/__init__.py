"""Executors: how the engine core reaches its workers (one per tensor/pipeline rank).

Stage 8. Mirrors vllm/v1/executor/. Read abstract.py, then uniproc_executor.py (one worker in
this process) and multiproc_executor.py (one process per rank).
"""

from vllm_mini.executor.abstract import Executor, WorkerDiedError

__all__ = ["Executor", "WorkerDiedError"]
