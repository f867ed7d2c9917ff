"""MultiprocExecutor: one worker process per tensor/pipeline rank on this machine.

Stage 8. Mirrors vllm/v1/executor/multiproc_executor.py. The engine core spawns world_size
processes; each joins a torch.distributed world (gloo on CPU, NCCL on CUDA, rendezvous over a
local TCP port), creates its TP and PP groups, builds its Worker and loads its shard of the
weights. After that every call is a message: the engine pickles (method, args) ONCE and writes
the same bytes into each worker's pipe; each worker runs the method and answers on its pipe.

Why pipes here and shared memory in vLLM: the scheduler output crosses to every worker on every
step. vLLM's MessageQueue (vllm/distributed/device_communicators/shm_broadcast.py) writes it
once into a shared-memory ring buffer that all local workers read, so a step costs one copy and
no syscall per reader; a pipe costs one write per worker. With at most 4 workers and a few KB per
step the pipes cost tens of microseconds per step here (benchmarks/distributed.py), and they
make failure easy to see: a dead worker's pipe closes and its process sentinel fires.

Failure handling. While waiting for answers the executor also watches every worker's process
sentinel, so a worker that dies (killed, out of memory) is noticed at once, even while the others
hang in a collective waiting for it: the executor then terminates the rest and raises
WorkerDiedError, which fails the requests in flight. Workers exit by themselves when the engine
goes away (their pipe reaches EOF), so a killed engine leaves no orphans. Next:
worker/pipeline_parallel.py.
"""

from __future__ import annotations

import os
import pickle
import socket
import traceback
import weakref
from dataclasses import dataclass
from multiprocessing import connection
from typing import Any

import torch
import torch.multiprocessing as mp

from vllm_mini.config import VllmConfig
from vllm_mini.executor.abstract import Executor, RPCMethod, WorkerDiedError

# Seconds to wait for the workers' start-up (model load) and for a clean exit at shutdown.
STARTUP_TIMEOUT_S = 300.0
SHUTDOWN_TIMEOUT_S = 5.0


@dataclass
class WorkerHandle:
    rank: int
    process: mp.Process
    conn: connection.Connection  # the engine's end of the worker's pipe


def get_distributed_init_method() -> str:
    """A free local TCP port for the workers' rendezvous (vLLM's get_distributed_init_method)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def threads_per_worker(world_size: int) -> int:
    """Split the cores between the workers: more threads than cores only adds contention."""
    return max(1, (os.cpu_count() or 1) // world_size)


class MultiprocExecutor(Executor):
    def _init_executor(self) -> None:
        world_size = self.parallel_config.world_size
        ctx = mp.get_context("spawn")  # fork would copy the engine's threads and torch state
        init_method = get_distributed_init_method()
        self.failure: WorkerDiedError | None = None
        self.workers: list[WorkerHandle] = []
        for rank in range(world_size):
            parent_conn, child_conn = ctx.Pipe()
            proc = ctx.Process(
                target=worker_main,
                args=(self.vllm_config, rank, init_method, child_conn, world_size),
                name=f"vllm_mini-worker-{rank}",
                daemon=True,  # never outlives the engine process
            )
            proc.start()
            child_conn.close()  # only the worker holds its end: EOF here means the worker is gone
            self.workers.append(WorkerHandle(rank, proc, parent_conn))
        # Runs at shutdown(), at garbage collection and at interpreter exit, whichever is first.
        self._finalizer = weakref.finalize(self, stop_processes, self.workers)
        self._gather(range(world_size), timeout=STARTUP_TIMEOUT_S)  # each says "loaded"

    def collective_rpc(
        self, method: RPCMethod, args: tuple = (), unique_reply_rank: int | None = None
    ) -> list[Any]:
        if self.failure is not None:
            raise self.failure
        message = pickle.dumps((method, args, unique_reply_rank))
        for handle in self.workers:
            try:
                handle.conn.send_bytes(message)
            except (BrokenPipeError, OSError):
                self._fail(_death_notice(handle))
        answers = self._gather(range(len(self.workers)))
        return [answers[unique_reply_rank]] if unique_reply_rank is not None else answers

    def _gather(self, ranks: range, timeout: float | None = None) -> list[Any]:
        """Every worker's answer, watching all sentinels so a death never leaves us waiting."""
        sentinels = {h.process.sentinel: h for h in self.workers}
        answers = []
        for rank in ranks:
            handle = self.workers[rank]
            while not handle.conn.poll():
                ready = connection.wait([handle.conn, *sentinels], timeout=timeout)
                if not ready:
                    self._fail(f"worker rank {rank} did not answer within {timeout:.0f} s")
                dead = [sentinels[s] for s in ready if s in sentinels]
                if dead and not handle.conn.poll():
                    self._fail(_death_notice(dead[0]))
            try:
                status, value = handle.conn.recv()
            except (EOFError, OSError):
                self._fail(_death_notice(handle))
            if status == "error":
                self._fail(f"worker rank {rank} failed:\n{value}")
            answers.append(value)
        return answers

    def shutdown(self) -> None:
        self._finalizer()


def _death_notice(handle: WorkerHandle) -> str:
    handle.process.join(1.0)  # reap it, so that its exit code is known
    code = handle.process.exitcode
    return f"worker rank {handle.rank} (pid {handle.process.pid}) died, exit code {code}"


def stop_processes(workers: list[WorkerHandle]) -> None:
    """Ask each process to exit, then terminate (and finally kill) whoever is still there.
    (The data-parallel front end, engine/core_client.py, stops its replicas the same way.)"""
    for handle in workers:
        try:
            handle.conn.send_bytes(pickle.dumps(("shutdown", (), None)))
        except (BrokenPipeError, OSError):
            pass
        handle.conn.close()
    for handle in workers:
        handle.process.join(SHUTDOWN_TIMEOUT_S)
        if handle.process.is_alive():  # stuck in a collective with a dead peer
            handle.process.terminate()
            handle.process.join(SHUTDOWN_TIMEOUT_S)
        if handle.process.is_alive():
            handle.process.kill()
            handle.process.join()


# ---------------------------------------------------------------- inside the worker process
def worker_main(
    vllm_config: VllmConfig,
    rank: int,
    init_method: str,
    conn: connection.Connection,
    world_size: int,
) -> None:
    """A worker process: join the world, load its shard, then serve calls until told to stop."""
    try:
        worker = init_worker(vllm_config, rank, init_method, world_size)
    except BaseException:  # noqa: BLE001 - the engine reports it, naming the rank
        _reply(conn, ("error", traceback.format_exc()))
        os._exit(1)
    ok = _reply(conn, ("ok", None))
    while ok:
        try:
            method, args, reply_rank = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):
            break  # the engine is gone: exit rather than linger as an orphan
        if method == "shutdown":
            break
        try:
            fn = getattr(worker, method) if isinstance(method, str) else None
            result = fn(*args) if fn else method(worker, *args)
        except Exception:  # noqa: BLE001 - e.g. a collective whose peer died: the engine stops all
            _reply(conn, ("error", traceback.format_exc()))
            break
        # Only the rank the engine reads pickles its result back (the others send None).
        ok = _reply(conn, ("ok", result if reply_rank in (None, rank) else None))
    # Exit at once: tearing the process group down (or letting the interpreter do it) waits
    # seconds for peers that may already be gone; the worker has nothing left to flush.
    os._exit(0)


def _reply(conn: connection.Connection, message: tuple[str, Any]) -> bool:
    """Send to the engine; False when it is no longer listening."""
    try:
        conn.send(message)
        return True
    except (BrokenPipeError, OSError):
        return False


def init_worker(vllm_config: VllmConfig, rank: int, init_method: str, world_size: int):
    """vLLM's init_worker_distributed_environment + Worker.load_model, for one rank."""
    from vllm_mini.distributed.parallel_state import (
        init_distributed_environment,
        initialize_model_parallel,
    )
    from vllm_mini.worker.worker import Worker

    torch.set_num_threads(threads_per_worker(world_size))
    parallel = vllm_config.parallel_config
    backend = "gloo"
    if vllm_config.device_config.torch_device.type == "cuda":
        backend = "nccl"
        torch.cuda.set_device(rank % torch.cuda.device_count())
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # all ranks are on this machine
    init_distributed_environment(world_size, rank, init_method, backend)
    initialize_model_parallel(parallel.tensor_parallel_size, parallel.pipeline_parallel_size)
    worker = Worker(vllm_config)
    worker.load_model()
    return worker
