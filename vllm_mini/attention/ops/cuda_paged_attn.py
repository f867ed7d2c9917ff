"""CUDA PagedAttention (csrc/attention/paged_attention_v{1,2}.cu, csrc/cache_kernels.cu).

Stage 4. Mirrors vllm/v1/attention/ops/paged_attn.py, which calls vLLM's compiled `_C` ops. The
kernels are compiled when the package is installed (setup.py, only where torch has CUDA and nvcc
exists) into the extension module `vllm_mini._C_cuda`, imported here. The CUDA kernels are
decode kernels (one query token per sequence), like vLLM's v1/v2; steps that carry prefill
tokens (q_len > 1) use the torch reference path on the same paged cache.
"""

from __future__ import annotations

import torch

from vllm_mini.attention.ops import paged_attn_torch

try:
    from vllm_mini import _C_cuda
except ImportError as e:
    raise ImportError(
        f"vllm_mini._C_cuda (the CUDA kernels) is not built or does not load ({e}): it is built "
        "only where torch has CUDA and nvcc is installed; reinstall there with "
        "`pip install --no-build-isolation -e .`"
    ) from e


def reshape_and_cache(
    key: torch.Tensor,
    value: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    _C_cuda.reshape_and_cache(key, value, key_cache, value_cache, slot_mapping)


def paged_attention(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    query_start_loc: torch.Tensor,
    max_query_len: int,
    max_seq_len: int,
    scale: float,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    if max_query_len > 1:
        return paged_attn_torch.paged_attention(
            query,
            key_cache,
            value_cache,
            block_table,
            seq_lens,
            query_start_loc,
            max_query_len,
            max_seq_len,
            scale,
            out,
        )
    query = query.contiguous()
    out = torch.empty_like(query) if out is None else out
    return _C_cuda.paged_attention_decode(
        out, query, key_cache, value_cache, block_table.contiguous(), seq_lens, max_seq_len, scale
    )
