"""ParallelConfig: how many processes share the model, and how.

Stage 1 (used from stage 8). Mirrors vllm/config/parallel.py. Three independent sizes:
- tensor_parallel_size: every layer's weights split across ranks (heads, MLP columns/rows);
- pipeline_parallel_size: the decoder layers split into consecutive stages;
- data_parallel_size: whole engine replicas, each with its own KV cache and scheduler.
One engine core drives tp x pp worker processes (its `world_size`); `data_parallel_size` engine
cores run side by side behind one front end. `distributed_executor_backend` says how the workers
of one core run: "uni" (in this process; only for world size 1), "mp" (one process per rank on
this machine) or "ray" (one Ray actor per rank, on the nodes of a Ray cluster). Next: load.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

EXECUTOR_BACKENDS = ("uni", "mp", "ray")


@dataclass
class ParallelConfig:
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    data_parallel_size: int = 1
    # None: "uni" for one rank, "mp" for more (vLLM picks the same way on one node).
    distributed_executor_backend: str | None = None
    # Which replica this engine core is (set by the data-parallel front end, not by users).
    data_parallel_rank: int = 0

    def __post_init__(self) -> None:
        for name in ("tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.distributed_executor_backend is None:
            self.distributed_executor_backend = "uni" if self.world_size == 1 else "mp"
        backend = self.distributed_executor_backend
        if backend not in EXECUTOR_BACKENDS:
            raise ValueError(
                f"distributed_executor_backend must be one of {list(EXECUTOR_BACKENDS)}, "
                f"got {backend!r}"
            )
        if backend == "uni" and self.world_size > 1:
            raise ValueError(
                f"distributed_executor_backend='uni' runs one rank in this process, but "
                f"tensor_parallel_size x pipeline_parallel_size = {self.world_size}; use 'mp'"
            )

    @property
    def world_size(self) -> int:
        """Worker processes of ONE engine core (data-parallel replicas are separate cores)."""
        return self.tensor_parallel_size * self.pipeline_parallel_size

    def verify_with_model_config(self, hf_config: Any) -> None:
        """Start-up errors that name the sizes, before any process is spawned."""
        tp, pp = self.tensor_parallel_size, self.pipeline_parallel_size
        heads = hf_config.num_attention_heads
        kv_heads = getattr(hf_config, "num_key_value_heads", None) or heads
        layers = hf_config.num_hidden_layers
        if heads % tp:
            raise ValueError(
                f"the model's {heads} attention heads are not divisible by "
                f"tensor_parallel_size={tp}"
            )
        if kv_heads % tp and tp % kv_heads:
            raise ValueError(
                f"the model's {kv_heads} KV heads and tensor_parallel_size={tp} must divide one "
                "another (each rank holds whole KV heads, or one KV head is replicated)"
            )
        if pp > layers:
            raise ValueError(
                f"pipeline_parallel_size={pp} is more stages than the model's {layers} layers"
            )
