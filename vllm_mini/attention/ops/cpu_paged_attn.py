"""The C++ CPU PagedAttention kernel (csrc/cpu/paged_attention.cpp), compiled at install time.

Stage 4. Mirrors vLLM's CPU attention backend (vllm/v1/attention/backends/cpu_attn.py with
csrc/cpu/cpu_attn.cpp): decode tokens go to the paged C++ kernel, while sequences with many new
tokens (prefills and prefill chunks) go to torch's SDPA, whose fused kernels use matrix-matrix
products — many queries share each K/V row, which a one-query-at-a-time kernel cannot exploit.
The C++ kernel itself handles any query length (the tests check it on prefills too), so short
queries stay in it: a speculative-decoding step verifies 1 + k tokens per sequence (stage 11),
and gathering the sequence's K/V for SDPA would cost more than attending to it.

`pip install --no-build-isolation -e .` compiles the file with the system g++ (setup.py, like
vLLM's setup.py builds its csrc/) into the extension module `vllm_mini._C`, which this file imports
like any other module: nothing is compiled at run time. `-march=native` decides the kernel's fast
path: on a CPU with AVX-512 the task loops use the intrinsics of csrc/cpu/cpu_types_x86.hpp,
elsewhere plain loops that the compiler vectorizes. Without the module, importing this file fails
with the fix, and the platform falls back to the `torch` backend.
"""

from __future__ import annotations

from itertools import accumulate
from pathlib import Path

import torch

from vllm_mini.attention.ops import paged_attn_torch
from vllm_mini.logger import init_logger

logger = init_logger(__name__)

try:
    from vllm_mini import _C
except ImportError as e:
    raise ImportError(
        f"vllm_mini._C (the C++ CPU kernel) is not built or does not load ({e}): reinstall with "
        "`pip install --no-build-isolation -e .` (needs g++); attention_backend='torch' runs "
        "without it"
    ) from e

# In a source checkout the kernel's sources sit next to the package; an installed wheel has none.
# Sequences with at most this many new tokens are attended by the C++ kernel (one query token
# at a time); longer ones by SDPA. 8 covers a verifying step of up to 7 drafts.
SHORT_QUERY = 8

_CSRC_CPU = Path(__file__).resolve().parents[3] / "csrc" / "cpu"


def _warn_if_sources_changed() -> None:
    """The library is built once, at install: an edited kernel runs only after a rebuild."""
    if not _CSRC_CPU.is_dir():
        return
    built = Path(_C.__file__).stat().st_mtime
    changed = sorted(f"csrc/cpu/{p.name}" for p in _CSRC_CPU.iterdir() if p.stat().st_mtime > built)
    if changed:
        logger.warning(
            "%s changed after vllm_mini._C was built, so this run uses the old kernel; rebuild "
            "with `make kernels` (`pip install --no-build-isolation --no-deps -e .`)",
            ", ".join(changed),
        )


_warn_if_sources_changed()


def reshape_and_cache(
    key: torch.Tensor,
    value: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    _C.reshape_and_cache(key, value, key_cache, value_cache, slot_mapping)


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
    if max_query_len <= SHORT_QUERY:  # decode or draft verification: all of it to the kernel
        return paged_attention_kernel(
            query, key_cache, value_cache, block_table, seq_lens, query_start_loc, scale, out
        )
    q_lens = (query_start_loc[1:] - query_start_loc[:-1]).tolist()
    short = [i for i, n in enumerate(q_lens) if n <= SHORT_QUERY]
    prefill = [i for i, n in enumerate(q_lens) if n > SHORT_QUERY]
    starts = query_start_loc.tolist()
    if short:
        rows = torch.tensor([t for i in short for t in range(starts[i], starts[i + 1])])
        idx = torch.tensor(short)
        sub_starts = torch.tensor([0, *accumulate(q_lens[i] for i in short)], dtype=torch.int32)
        sub_out = paged_attention_kernel(
            query[rows].contiguous(),
            key_cache,
            value_cache,
            block_table[idx],
            seq_lens[idx],
            sub_starts,
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
    return _C.paged_attention(
        query, key_cache, value_cache, block_table, seq_lens, query_start_loc, scale, out, portable
    )
