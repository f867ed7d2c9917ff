"""Paged attention backend: KV lives in fixed-size blocks of one big per-layer tensor.

Stage 4. Mirrors vllm/v1/attention/backends/ (e.g. the CPU and FlashAttention backends) together
with vllm/v1/attention/ops/paged_attn.py. Each step does two things per layer: scatter the new
tokens' K/V into their slots (`reshape_and_cache`), then attend through each sequence's block
table (`paged_attention`). Which kernel does that (torch / triton / cpu / cuda) is the only
difference between backends, so each backend class below is just a name; see attention/ops/.
"""

from __future__ import annotations

import torch

from vllm_mini.attention.backends.abstract import (
    AttentionBackend,
    AttentionImpl,
    AttentionMetadata,
)
from vllm_mini.attention.ops import get_paged_attention_ops
from vllm_mini.attention.ops.cpu_attn_plan import build_plan


class PagedAttentionBackend(AttentionBackend):
    """The paged backends: KV in the runner's block tensors, shareable by the prefix cache."""

    @classmethod
    def make_impl(
        cls, num_heads: int, head_size: int, scale: float, num_kv_heads: int
    ) -> PagedAttentionImpl:
        return PagedAttentionImpl(num_heads, head_size, scale, num_kv_heads, ops_name=cls.name)


class TorchPagedAttentionBackend(PagedAttentionBackend):
    name = "torch"  # the reference kernels, plain torch


class TritonPagedAttentionBackend(PagedAttentionBackend):
    name = "triton"


class CpuPagedAttentionBackend(PagedAttentionBackend):
    name = "cpu"  # the C++ kernels in csrc/cpu

    @classmethod
    def make_impl(
        cls, num_heads: int, head_size: int, scale: float, num_kv_heads: int
    ) -> PagedAttentionImpl:
        return CpuPagedAttentionImpl(num_heads, head_size, scale, num_kv_heads, ops_name=cls.name)


class CudaPagedAttentionBackend(PagedAttentionBackend):
    name = "cuda"  # the CUDA kernels in csrc/cuda
    # Its decode kernel takes tensors plus the fixed max_seq_len: nothing read back to the host.
    # (triton's wrapper sizes repeat_interleave from the data, a sync; torch loops in Python.)
    supports_cudagraph = True


class PagedAttentionImpl(AttentionImpl):
    def __init__(
        self, num_heads: int, head_size: int, scale: float, num_kv_heads: int, ops_name: str
    ) -> None:
        super().__init__(num_heads, head_size, scale, num_kv_heads)
        self.ops_name = ops_name
        self.ops = get_paged_attention_ops(ops_name)

    def _write_cache(
        self,
        key: torch.Tensor,
        value: torch.Tensor,
        kv_cache: torch.Tensor | None,
        attn_metadata: AttentionMetadata,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this step's new K/V in their slots; returns the (key, value) caches."""
        if kv_cache is None:
            raise RuntimeError("paged attention ran before the model runner bound a KV cache")
        # kv_cache: [2, num_blocks, block_size, num_kv_heads, head_size]
        key_cache, value_cache = kv_cache[0], kv_cache[1]
        self.ops.reshape_and_cache(key, value, key_cache, value_cache, attn_metadata.slot_mapping)
        return key_cache, value_cache

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        kv_cache: torch.Tensor | None,
        attn_metadata: AttentionMetadata,
    ) -> torch.Tensor:
        key_cache, value_cache = self._write_cache(key, value, kv_cache, attn_metadata)
        return self.ops.paged_attention(
            query,
            key_cache,
            value_cache,
            attn_metadata.block_table,
            attn_metadata.seq_lens,
            attn_metadata.query_start_loc,
            attn_metadata.max_query_len,
            attn_metadata.max_seq_len,
            self.scale,
        )


class CpuPagedAttentionImpl(PagedAttentionImpl):
    """The CPU backend: one plan per step, shared by all layers, and the new K/V handed on.

    Which rows the C++ kernel takes and what SDPA needs for the longer sequences (row ranges,
    block ids, masks) depends only on the step, so the first layer builds it and caches it on the
    metadata (vLLM: the CPU backend's metadata builder, vllm/v1/attention/backends/cpu_attn.py).
    A fresh prompt's K/V are this layer's inputs: SDPA reads them there, not back from the cache.
    """

    def __init__(
        self, num_heads: int, head_size: int, scale: float, num_kv_heads: int, ops_name: str
    ) -> None:
        super().__init__(num_heads, head_size, scale, num_kv_heads, ops_name)
        from vllm_mini.attention.ops.cpu_paged_attn import run_plan  # needs the built _C

        self._run_plan = run_plan

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        kv_cache: torch.Tensor | None,
        attn_metadata: AttentionMetadata,
    ) -> torch.Tensor:
        key_cache, value_cache = self._write_cache(key, value, kv_cache, attn_metadata)
        block_size = key_cache.shape[1]
        cache_key = f"cpu/{block_size}"  # the only per-layer input the plan depends on
        plan = attn_metadata.backend_cache.get(cache_key)
        if plan is None:
            plan = build_plan(
                attn_metadata.query_start_loc_cpu,
                attn_metadata.seq_lens_cpu,
                attn_metadata.query_start_loc,
                attn_metadata.seq_lens,
                attn_metadata.block_table,
                block_size,
            )
            attn_metadata.backend_cache[cache_key] = plan
        return self._run_plan(query, key, value, key_cache, value_cache, plan, self.scale)
