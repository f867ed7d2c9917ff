"""Attention backend selector: the one list of backends, and name -> backend.

Stage 4. Mirrors vllm/v1/attention/selector.py, where the platform and the model decide which
backend every layer uses. Here the name comes from AttentionConfig (the platform fills it when
unset).
Everything that depends on the backend asks the backend class (`uses_paged_kv_cache`,
`supports_prefix_caching`, `make_impl`) instead of comparing names.
"""

from __future__ import annotations

from vllm_mini.attention.backends.abstract import AttentionBackend, AttentionImpl
from vllm_mini.attention.backends.naive import NaiveAttentionBackend
from vllm_mini.attention.backends.paged import (
    CpuPagedAttentionBackend,
    CudaPagedAttentionBackend,
    TorchPagedAttentionBackend,
    TritonPagedAttentionBackend,
)

ATTENTION_BACKENDS: dict[str, type[AttentionBackend]] = {
    backend.name: backend
    for backend in (
        NaiveAttentionBackend,
        TorchPagedAttentionBackend,
        TritonPagedAttentionBackend,
        CpuPagedAttentionBackend,
        CudaPagedAttentionBackend,
    )
}
# The backends whose kernels live in attention/ops (the names its PAGED_BACKENDS lists).
PAGED_BACKENDS = tuple(n for n, b in ATTENTION_BACKENDS.items() if b.uses_paged_kv_cache)


def get_attn_backend(name: str) -> type[AttentionBackend]:
    if name not in ATTENTION_BACKENDS:
        raise ValueError(
            f"attention_backend must be one of {list(ATTENTION_BACKENDS)}, got {name!r}"
        )
    return ATTENTION_BACKENDS[name]


def get_attn_impl(
    backend: str, num_heads: int, head_size: int, scale: float, num_kv_heads: int
) -> AttentionImpl:
    return get_attn_backend(backend).make_impl(num_heads, head_size, scale, num_kv_heads)
