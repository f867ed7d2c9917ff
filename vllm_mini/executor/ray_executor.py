"""RayDistributedExecutor: the workers as Ray actors, placed by a placement group.

Stage 8. Mirrors vllm/v1/executor/ray_executor.py (and ray_utils.py). This is how vLLM serves a
model across machines: every node joins one Ray cluster (`ray start --head` on one,
`ray start --address=HEAD:6379` on the others), the engine reserves one bundle of resources per
rank in a placement group (PACK: as few nodes as possible, so a TP group shares a node and its
fast links), and starts one actor per bundle. The actors then do exactly what the `mp` workers
do: join a torch.distributed world (rank 0's node address, a free port there), build their TP/PP
groups and load their shard (multiproc_executor.init_worker). Every step is one remote call per
actor; the engine reads the answer of the rank that samples.

Here one node (this machine) is the whole cluster: `ray.init()` starts a local Ray instance
unless RAY_ADDRESS names an existing one. A dead actor (killed, out of memory, its node lost)
surfaces as Ray's actor error, which the executor turns into WorkerDiedError like `mp` does.
Next: ../worker/pipeline_parallel.py.
"""

from __future__ import annotations

import os
from typing import Any

from vllm_mini.config import VllmConfig
from vllm_mini.executor.abstract import Executor, RPCMethod, WorkerDiedError

STARTUP_TIMEOUT_S = 300.0


class RayWorkerWrapper:
    """The actor body: one Worker, built only once the executor knows the rendezvous address."""

    def __init__(self) -> None:
        self.worker = None

    def node_address(self) -> tuple[str, int]:
        """This actor's node IP and a free TCP port on it (rank 0 hosts the rendezvous)."""
        import socket

        import ray

        ip = ray.util.get_node_ip_address()
        with socket.socket() as s:
            s.bind((ip, 0))
            return ip, s.getsockname()[1]

    def init_worker(
        self, vllm_config: VllmConfig, rank: int, init_method: str, world_size: int
    ) -> None:
        from vllm_mini.executor.multiproc_executor import init_worker

        self.worker = init_worker(vllm_config, rank, init_method, world_size)

    def execute_method(self, method: RPCMethod, args: tuple, reply: bool) -> Any:
        fn = getattr(self.worker, method) if isinstance(method, str) else None
        result = fn(*args) if fn else method(self.worker, *args)
        return result if reply else None  # only the rank the engine reads sends its result


class RayDistributedExecutor(Executor):
    def _init_executor(self) -> None:
        import ray
        from ray.util.placement_group import placement_group, remove_placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        self._ray = ray
        self._remove_pg = remove_placement_group
        self.failure: WorkerDiedError | None = None
        self.started_ray = not ray.is_initialized()
        if self.started_ray:
            # RAY_ADDRESS joins an existing cluster (multi-node); without it a local one starts.
            ray.init(
                address=os.environ.get("RAY_ADDRESS"),
                include_dashboard=False,
                log_to_driver=False,
            )
        world_size = self.parallel_config.world_size
        device = "GPU" if self.vllm_config.device_config.torch_device.type == "cuda" else "CPU"
        # One bundle per rank; CPU ranks ask for no CPU so a 2-core node can host 3 ranks (the
        # threads are divided between them by init_worker, as with `mp`).
        bundle = {"GPU": 1} if device == "GPU" else {"CPU": 0.001}
        self.placement_group = placement_group([bundle] * world_size, strategy="PACK")
        ray.get(self.placement_group.ready(), timeout=STARTUP_TIMEOUT_S)
        actor_cls = ray.remote(RayWorkerWrapper)
        self.actors = [
            actor_cls.options(
                num_cpus=bundle.get("CPU", 0),
                num_gpus=bundle.get("GPU", 0),
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    self.placement_group, placement_group_bundle_index=rank
                ),
            ).remote()
            for rank in range(world_size)
        ]
        ip, port = self._gather([self.actors[0].node_address.remote()], STARTUP_TIMEOUT_S)[0]
        init_method = f"tcp://{ip}:{port}"
        self._gather(
            [
                actor.init_worker.remote(self.vllm_config, rank, init_method, world_size)
                for rank, actor in enumerate(self.actors)
            ],
            STARTUP_TIMEOUT_S,
        )

    def collective_rpc(
        self, method: RPCMethod, args: tuple = (), unique_reply_rank: int | None = None
    ) -> list[Any]:
        if self.failure is not None:
            raise self.failure
        refs = [
            actor.execute_method.remote(method, args, unique_reply_rank in (None, rank))
            for rank, actor in enumerate(self.actors)
        ]
        answers = self._gather(refs)
        return [answers[unique_reply_rank]] if unique_reply_rank is not None else answers

    def _gather(self, refs: list, timeout: float | None = None) -> list[Any]:
        """Every answer in order; the first failure (a dead actor, an exception) stops them all.

        `ray.wait` returns whichever call finished, so an actor that died is seen at once even
        while its peers hang in a collective waiting for it."""
        ray = self._ray
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=timeout)
            if not ready:
                self._fail(f"a Ray worker did not answer within {timeout:.0f} s")
            try:
                ray.get(ready[0])
            except ray.exceptions.RayActorError as e:
                rank = refs.index(ready[0]) if ready[0] in refs else "?"
                self._fail(f"worker rank {rank} (a Ray actor) died: {type(e).__name__}")
            except ray.exceptions.RayTaskError as e:
                rank = refs.index(ready[0])
                self._fail(f"worker rank {rank} failed:\n{e}")
        return ray.get(refs)

    def shutdown(self) -> None:
        ray = getattr(self, "_ray", None)
        if ray is None or not ray.is_initialized():
            return
        for actor in getattr(self, "actors", []):
            ray.kill(actor)
        self.actors = []
        if getattr(self, "placement_group", None) is not None:
            self._remove_pg(self.placement_group)
            self.placement_group = None
        if self.started_ray:
            ray.shutdown()
