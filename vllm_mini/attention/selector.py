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
from vllm_mini.config import VllmConfig
from vllm_mini.logger import init_logger

logger = init_logger(__name__)

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


def apply_backend_constraints(vllm_config: VllmConfig) -> VllmConfig:
    """Switch off what the chosen backend cannot do, e.g. prefix caching on naive attention.

    Called by EngineArgs.create_engine_config and EngineCore: config/ sits below attention/ and
    may not import it (tests/test_import_layering.py), so VllmConfig cannot ask the backend itself.
    """
    backend = get_attn_backend(vllm_config.attention_config.backend)
    if not backend.supports_prefix_caching and vllm_config.cache_config.enable_prefix_caching:
        # e.g. naive attention keeps a private cache per request: nothing can be shared.
        logger.info(
            "prefix caching is off: the %s attention backend cannot share blocks", backend.name
        )
        vllm_config.cache_config.enable_prefix_caching = False
    return vllm_config
