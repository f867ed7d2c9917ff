"""The C++ CPU PagedAttention kernel (csrc/cpu/paged_attention.cpp), built on first use.

Stage 4. Mirrors vLLM's CPU attention backend (vllm/v1/attention/backends/cpu_attn.py with
csrc/cpu/attention.cpp): decode tokens go to the paged C++ kernel, while sequences with several new
tokens (prefills and prefill chunks) go to torch's SDPA, whose fused kernels use matrix-matrix
products — many queries share each K/V row, which a one-query-at-a-time kernel cannot exploit.
The C++ kernel itself handles any query length (the tests check it on prefills too).

`torch.utils.cpp_extension.load` compiles the file with the system g++ once (about a minute on
2 cores) and caches the shared library in torch's extension directory; later imports just load it.
`-march=native` decides the kernel's fast path: on a CPU with AVX-512 the task loops use the
intrinsics of csrc/cpu/cpu_types_x86.hpp, elsewhere plain loops that the compiler vectorizes.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path
from types import ModuleType

import torch

from vllm_mini.attention.ops import paged_attn_torch

_SOURCE = Path(__file__).resolve().parents[3] / "csrc" / "cpu" / "paged_attention.cpp"
_CFLAGS = [
    "-O3",
    "-march=native",  # the build machine's vector instructions (AVX-512 where it has them)
    "-fopenmp",
    # Lets float sums reorder into SIMD lanes and exp use glibc's vector version (libmvec). The
    # kernel never relies on inf or NaN (its maxima start at the lowest float, not -inf), so the
    # finite-math part of the flag is safe, and it is the part that enables libmvec.
    "-ffast-math",
]
if platform.machine() in ("x86_64", "AMD64"):
    # gcc prefers 256-bit vectors when tuning for recent Intel cores; the loops it vectorizes
    # itself (the portable path, the reduce) run faster with all 512 bits where they exist.
    _CFLAGS.append("-mprefer-vector-width=512")


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
        extra_cflags=_CFLAGS,
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
    if max_query_len == 1:  # pure decode step: everything goes to the kernel
        return paged_attention_kernel(
            query, key_cache, value_cache, block_table, seq_lens, query_start_loc, scale, out
        )
    q_lens = (query_start_loc[1:] - query_start_loc[:-1]).tolist()
    decode = [i for i, n in enumerate(q_lens) if n == 1]
    prefill = [i for i, n in enumerate(q_lens) if n > 1]
    starts = query_start_loc.tolist()
    if decode:
        rows = torch.tensor([starts[i] for i in decode])
        idx = torch.tensor(decode)
        sub_out = paged_attention_kernel(
            query[rows].contiguous(),
            key_cache,
            value_cache,
            block_table[idx],
            seq_lens[idx],
            torch.arange(len(decode) + 1, dtype=torch.int32),
            scale,
        )
        out[rows] = sub_out
    for i in prefill:
        lo, hi = starts[i], starts[i + 1]
        paged_attn_torch.paged_attention(
            query[lo:hi],
            key_cache,
            value_cache,
            block_table[i : i + 1],
            seq_lens[i : i + 1],
            torch.tensor([0, hi - lo], dtype=torch.int32),
            hi - lo,
            int(seq_lens[i]),
            scale,
            out[lo:hi],
        )
    return out


def paged_attention_kernel(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    query_start_loc: torch.Tensor,
    scale: float,
    out: torch.Tensor | None = None,
    portable: bool = False,
) -> torch.Tensor:
    """The C++ kernel alone, for every query length (used directly by the kernel tests).

    `portable=True` runs the plain-loop implementation even where the AVX-512 one exists, so
    that the tests check the code path of CPUs without AVX-512 on any machine.
    """
    out = torch.empty_like(query) if out is None else out
    return _ext().paged_attention(
        query, key_cache, value_cache, block_table, seq_lens, query_start_loc, scale, out, portable
    )
