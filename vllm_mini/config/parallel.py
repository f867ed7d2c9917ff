"""ParallelConfig: how many devices share the model.

Stage 1 (used from stage 8). Mirrors vllm/config/parallel.py. The linear layers already shard their
weights by tensor-parallel rank (see model_executor/layers/linear.py); running more than one rank
arrives with the distributed stage. Next: load.py.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ParallelConfig:
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1

    def __post_init__(self) -> None:
        for name in ("tensor_parallel_size", "pipeline_parallel_size"):
            value = getattr(self, name)
            if value != 1:
                raise ValueError(
                    f"{name} must be 1 for now (multi-device runs arrive in stage 8), got {value}"
                )

    @property
    def world_size(self) -> int:
        return self.tensor_parallel_size * self.pipeline_parallel_size
