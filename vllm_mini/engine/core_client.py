"""Data parallelism: several engine cores, each in its own process, behind one front end.

Stage 8. Mirrors vllm/v1/engine/core_client.py (the data-parallel client) and the load balancing
of vllm/v1/engine/coordinator.py. A data-parallel replica is a whole engine core: its own
scheduler, its own KV cache, its own workers (one in-process worker, or tp x pp processes of its
own). Replicas never communicate; the front end only decides where each new request goes — to the
replica with the fewest unfinished requests (vLLM's coordinator ranks them by waiting and
running counts the same way) — and steps all replicas that have work at once, so on a machine
with enough cores they compute in parallel.

Why processes and not threads: a step is mostly PyTorch ops, which release the GIL, but the
scheduler, input preparation and sampling bookkeeping are Python, and two engine cores in threads
would take turns on the GIL for all of it. One process per replica is also what vLLM runs.

`make_engine_core` is what LLMEngine calls: a plain EngineCore for one replica, this client for
more. The client offers the EngineCore methods the front end uses (add_request, step,
abort_requests, make_stats, ...). Next: lessons/08_distributed/.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import traceback
import weakref
from multiprocessing import connection
from typing import Any

import torch
import torch.multiprocessing as mp

from vllm_mini.config import VllmConfig
from vllm_mini.core.sched.output import EngineCoreOutput
from vllm_mini.core.sched.scheduler import SchedulerStats
from vllm_mini.engine import EngineCoreRequest
from vllm_mini.engine.core import EngineCore
from vllm_mini.executor import WorkerDiedError
from vllm_mini.executor.multiproc_executor import STARTUP_TIMEOUT_S, stop_processes


def make_engine_core(vllm_config: VllmConfig) -> EngineCore | DPEngineCoreClient:
    if vllm_config.parallel_config.data_parallel_size > 1:
        return DPEngineCoreClient(vllm_config)
    return EngineCore(vllm_config)


@dataclasses.dataclass
class CoreHandle:
    rank: int  # the replica's data_parallel_rank
    process: mp.Process
    conn: connection.Connection
    num_unfinished: int = 0  # requests it holds, as of its last step plus those added since
    num_added: int = 0  # every request it was ever given (tests read it)


class DPEngineCoreClient:
    def __init__(self, vllm_config: VllmConfig) -> None:
        self.vllm_config = vllm_config
        size = vllm_config.parallel_config.data_parallel_size
        ctx = mp.get_context("spawn")
        self.cores: list[CoreHandle] = []
        for rank in range(size):
            config = dataclasses.replace(
                vllm_config,
                parallel_config=dataclasses.replace(
                    vllm_config.parallel_config, data_parallel_rank=rank
                ),
            )
            parent_conn, child_conn = ctx.Pipe()
            # Not a daemon: a replica may spawn tp x pp workers of its own. It exits on its own
            # when this front end goes away (its pipe reaches EOF).
            proc = ctx.Process(
                target=run_engine_core, args=(config, child_conn, size), name=f"vllm_mini-dp{rank}"
            )
            proc.start()
            child_conn.close()
            self.cores.append(CoreHandle(rank, proc, parent_conn))
        self._finalizer = weakref.finalize(self, stop_processes, self.cores)
        self.request_core: dict[str, CoreHandle] = {}
        self.errored: WorkerDiedError | None = None
        self.num_blocks = min(self._call_all("num_blocks", timeout=STARTUP_TIMEOUT_S))
        self._core_stats: list[SchedulerStats] = self._call_all("make_stats")

    # ------------------------------------------------------------------ messaging
    def _send(self, core: CoreHandle, method: str, *args: Any) -> None:
        if self.errored is not None:
            raise self.errored
        try:
            core.conn.send_bytes(pickle.dumps((method, args)))
        except (BrokenPipeError, OSError):
            self._fail(f"engine core dp rank {core.rank} is gone (its pipe is closed)")

    def _recv(self, core: CoreHandle, timeout: float | None = None) -> Any:
        others = [c.process.sentinel for c in self.cores]
        while not core.conn.poll():
            ready = connection.wait([core.conn, *others], timeout=timeout)
            if not ready:
                self._fail(f"engine core dp rank {core.rank} did not answer in {timeout:.0f} s")
            if any(s in others for s in ready) and not core.conn.poll():
                dead = next(c for c in self.cores if c.process.sentinel in ready)
                dead.process.join(1.0)
                self._fail(
                    f"engine core dp rank {dead.rank} (pid {dead.process.pid}) died, "
                    f"exit code {dead.process.exitcode}"
                )
        try:
            status, value = core.conn.recv()
        except (EOFError, OSError):
            self._fail(f"engine core dp rank {core.rank} closed its pipe")
        if status == "error":
            self._fail(f"engine core dp rank {core.rank} failed:\n{value}")
        return value

    def _call_all(self, method: str, *args: Any, timeout: float | None = None) -> list[Any]:
        for core in self.cores:
            self._send(core, method, *args)
        return [self._recv(core, timeout) for core in self.cores]

    def _fail(self, reason: str) -> None:
        self.errored = WorkerDiedError(f"{reason}; the engine has stopped every replica")
        self.shutdown()
        raise self.errored

    # ------------------------------------------------------------------ the EngineCore surface
    def add_request(self, request: EngineCoreRequest) -> None:
        core = min(self.cores, key=lambda c: c.num_unfinished)  # least loaded; ties: lowest rank
        self._send(core, "add_request", request)
        self._recv(core)
        core.num_unfinished += 1
        core.num_added += 1
        self.request_core[request.request_id] = core

    def abort_requests(self, request_ids: list[str]) -> None:
        by_core: dict[int, list[str]] = {}
        for req_id in request_ids:
            core = self.request_core.pop(req_id, None)
            if core is not None:
                by_core.setdefault(core.rank, []).append(req_id)
        for rank, ids in by_core.items():
            self._send(self.cores[rank], "abort_requests", ids)
        for rank in by_core:
            self._recv(self.cores[rank])

    def step(self) -> list[EngineCoreOutput]:
        busy = [c for c in self.cores if c.num_unfinished > 0]
        for core in busy:  # all replicas compute at once...
            self._send(core, "step_with_stats")
        outputs: list[EngineCoreOutput] = []
        for core in busy:  # ...and the front end collects them in rank order
            core_outputs, self._core_stats[core.rank], core.num_unfinished = self._recv(core)
            outputs.extend(core_outputs)
        for out in outputs:
            if out.finished:
                self.request_core.pop(out.request_id, None)
        return outputs

    def has_unfinished_requests(self) -> bool:
        return any(c.num_unfinished for c in self.cores)

    def get_num_unfinished_requests(self) -> int:
        return sum(c.num_unfinished for c in self.cores)

    def make_stats(self) -> SchedulerStats:
        """One view of all replicas, each as of its last step."""
        parts = self._core_stats
        return SchedulerStats(
            num_running_reqs=sum(p.num_running_reqs for p in parts),
            num_waiting_reqs=sum(p.num_waiting_reqs for p in parts),
            kv_cache_usage=sum(p.kv_cache_usage for p in parts) / len(parts),
            prefix_cache_queries=sum(p.prefix_cache_queries for p in parts),
            prefix_cache_hits=sum(p.prefix_cache_hits for p in parts),
            num_preemptions=sum(p.num_preemptions for p in parts),
        )

    def reset_prefix_cache(self) -> bool:
        return all(self._call_all("reset_prefix_cache"))

    def add_lora(self, lora_request) -> None:
        self._call_all("add_lora", lora_request)  # every replica may get its requests

    def remove_lora(self, lora_int_id: int) -> bool:
        return any(self._call_all("remove_lora", lora_int_id))

    def list_loras(self) -> list:
        return self._call_all("list_loras")[0]

    def snapshot(self):
        raise RuntimeError("snapshot() reads one engine core; with data_parallel_size > 1 each "
                           "replica runs in its own process")  # fmt: skip

    @property
    def worker(self):
        raise RuntimeError("with data_parallel_size > 1 the workers live in replica processes")

    def shutdown(self) -> None:
        self._finalizer()


# ---------------------------------------------------------------- inside a replica's process
def run_engine_core(vllm_config: VllmConfig, conn: connection.Connection, dp_size: int) -> None:
    """One data-parallel replica: build an EngineCore, then serve the front end's calls."""
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // dp_size))
    core = None
    try:
        core = EngineCore(vllm_config)
        while True:
            try:
                method, args, *_ = pickle.loads(conn.recv_bytes())
            except (EOFError, OSError):
                break  # the front end is gone
            if method == "shutdown":
                break
            try:
                conn.send(("ok", _call(core, method, args)))
            except Exception:  # noqa: BLE001 - the front end fails the engine, naming the rank
                conn.send(("error", traceback.format_exc()))
    except Exception:  # noqa: BLE001 - start-up failed: report it
        try:
            conn.send(("error", traceback.format_exc()))
        except OSError:
            pass
    finally:
        if core is not None:
            core.shutdown()


def _call(core: EngineCore, method: str, args: tuple) -> Any:
    if method == "num_blocks":
        return core.num_blocks
    if method == "step_with_stats":  # one round trip per step: outputs, stats and load together
        outputs = core.step()
        return outputs, core.make_stats(), core.get_num_unfinished_requests()
    return getattr(core, method)(*args)
