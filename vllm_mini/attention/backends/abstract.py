"""The contract between the model runner, the attention layer and every attention backend.

Stages 3-4. Mirrors vllm/v1/attention/backend.py (AttentionBackend / AttentionImpl /
AttentionMetadata). An AttentionBackend says what the engine must know about a backend before any
layer exists (does it use the paged KV cache, can blocks be shared by the prefix cache) and builds
one AttentionImpl per layer. The model runner builds one AttentionMetadata per step; every
Attention layer reads it from the forward context and hands it to its impl's `forward`. The list
of backends is in attention/selector.py. Next: naive.py.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch


@dataclass
class AttentionMetadata:
    """Where this step's tokens come from and where their KV goes.

    All sequences' new tokens are flattened into one batch of `num_actual_tokens` rows. Sequence i
    owns rows query_start_loc[i]:query_start_loc[i+1]; they are the last tokens of its
    seq_lens[i]-long context (cached tokens + new tokens).
    """

    num_actual_tokens: int
    max_query_len: int
    max_seq_len: int
    query_start_loc: torch.Tensor  # int32 [num_seqs + 1]
    seq_lens: torch.Tensor  # int32 [num_seqs]
    block_table: torch.Tensor  # int32 [num_seqs, max_num_blocks_per_seq]
    slot_mapping: torch.Tensor  # int64 [num_tokens]: block_id * block_size + offset
    # Python copies, so backends that loop over sequences never sync with the device.
    query_start_loc_cpu: list[int]
    seq_lens_cpu: list[int]
    req_ids: list[str]
    # Whatever a backend derives from the fields above once per step and reuses in all of the
    # model's layers (vLLM builds it in the backend's metadata builder, e.g. the CPU backend's
    # split into decode and prefill rows). Keyed by backend; never passed to __init__, so a
    # `dataclasses.replace` copy (the CUDA-graph runner's) starts with an empty one.
    backend_cache: dict[str, Any] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @property
    def num_seqs(self) -> int:
        return len(self.req_ids)


class AttentionBackend(ABC):
    """A backend as the config, the worker and the selector see it: a name and capabilities."""

    name: ClassVar[str]
    # The model runner allocates one [2, num_blocks, block_size, kv_heads, head_size] tensor per
    # layer and the worker sizes it; False for a backend that keeps its own KV memory.
    uses_paged_kv_cache: ClassVar[bool] = True
    # KV blocks may be shared between requests, so the prefix cache can hand them out again.
    supports_prefix_caching: ClassVar[bool] = True
    # A pure-decode forward can be captured in a CUDA graph: no host sync, no shapes decided from
    # the step's values (vLLM: AttentionCGSupport). Stage 6.
    supports_cudagraph: ClassVar[bool] = False

    @classmethod
    @abstractmethod
    def make_impl(
        cls, num_heads: int, head_size: int, scale: float, num_kv_heads: int
    ) -> AttentionImpl:
        """The per-layer implementation (vLLM: get_impl_cls()(...))."""


class AttentionImpl(ABC):
    """One backend's attention computation for one layer."""

    def __init__(self, num_heads: int, head_size: int, scale: float, num_kv_heads: int) -> None:
        self.num_heads = num_heads
        self.head_size = head_size
        self.scale = scale
        self.num_kv_heads = num_kv_heads

    @abstractmethod
    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        kv_cache: torch.Tensor | None,
        attn_metadata: AttentionMetadata,
    ) -> torch.Tensor:
        """query [T, num_heads, head_size], key/value [T, num_kv_heads, head_size] -> [T, H, D]."""

    def free_requests(self, req_ids: set[str]) -> None:  # noqa: B027 - optional hook
        """Drop per-request state of finished or preempted requests. The runner calls it on
        every layer; only backends that own per-request memory need to override it."""
