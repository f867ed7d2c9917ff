"""CUDA PagedAttention (csrc/attention/paged_attention_v{1,2}.cu, csrc/cache_kernels.cu).

Stage 4. Mirrors vllm/attention/ops/paged_attn.py, which calls vLLM's compiled `_C` ops. Built with
torch.utils.cpp_extension on first use, only where CUDA exists. The CUDA kernels here are
decode kernels (one query token per sequence), like vLLM's v1/v2; steps that carry prefill
tokens (q_len > 1) use the torch reference path on the same paged cache.
"""

from __future__ import annotations

import functools
from pathlib import Path
from types import ModuleType

import torch

from vllm_mini.attention.ops import paged_attn_torch

_CSRC = Path(__file__).resolve().parents[3] / "csrc"


@functools.cache
def _ext() -> ModuleType:
    if not torch.cuda.is_available():
        raise RuntimeError("the cuda backend needs a CUDA device")
    from torch.utils.cpp_extension import load

    sources = [
        _CSRC / "torch_bindings.cpp",
        _CSRC / "attention" / "paged_attention_v1.cu",
        _CSRC / "attention" / "paged_attention_v2.cu",
        _CSRC / "cache_kernels.cu",
    ]
    return load(
        name="vllm_mini_cuda_paged_attention",
        sources=[str(s) for s in sources],
        extra_include_paths=[str(_CSRC)],
        extra_cuda_cflags=["-O3", "-std=c++17"],
        verbose=False,
    )


def reshape_and_cache(
    key: torch.Tensor,
    value: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    _ext().reshape_and_cache(key, value, key_cache, value_cache, slot_mapping)


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
    return _ext().paged_attention_decode(
        out, query, key_cache, value_cache, block_table.contiguous(), seq_lens, max_seq_len, scale
    )
