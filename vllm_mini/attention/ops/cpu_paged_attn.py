"""The C++ CPU PagedAttention kernel (csrc/cpu/paged_attention.cpp), built on first use.

Stage 4. Mirrors vllm/attention/ops/ipex_attn.py / the CPU backend's use of csrc/cpu/attention.cpp.
`torch.utils.cpp_extension.load` compiles the file with the system g++ once (about a minute on
2 cores) and caches the shared library in torch's extension directory; later imports just load it.
"""

from __future__ import annotations

import functools
from pathlib import Path
from types import ModuleType

import torch

_SOURCE = Path(__file__).resolve().parents[3] / "csrc" / "cpu" / "paged_attention.cpp"


@functools.cache
def _ext() -> ModuleType:
    from torch.utils.cpp_extension import load

    if not _SOURCE.exists():
        raise RuntimeError(
            f"C++ source {_SOURCE} not found (the cpu backend needs the repo's csrc/)"
        )
    return load(
        name="vllm_mini_cpu_paged_attention",
        sources=[str(_SOURCE)],
        extra_cflags=["-O3", "-march=native", "-fopenmp"],
        extra_ldflags=["-fopenmp"],
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
    query = query.contiguous()
    out = torch.empty_like(query) if out is None else out
    return _ext().paged_attention(
        query, key_cache, value_cache, block_table, seq_lens, query_start_loc, scale, out
    )
