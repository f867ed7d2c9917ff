"""The C++ CPU PagedAttention kernel (csrc/cpu/paged_attention.cpp), compiled at install time.

Stage 4. Mirrors vLLM's CPU attention backend (vllm/v1/attention/backends/cpu_attn.py with
csrc/cpu/cpu_attn.cpp), whose kernel reads the paged cache directly for decodes and prefills
alike. Here too the C++ kernel takes every sequence with up to KERNEL_MAX_QUERY new tokens
(cpu_attn_plan.py): decodes, draft verification (stage 11), and on a 2-core AVX-512 CPU prompts
of up to ~1024 tokens, where it measured faster than torch's SDPA (which must first gather the
K/V out of the blocks, and whose matrix-matrix tiles pay only for long queries). Longer
sequences go to SDPA: a fresh prompt attends the step's new K/V as the layer received them, a
chunk after a cached prefix gathers its blocks. `run_plan` executes a step's plan; the ops
interface's `paged_attention` plans each call itself.

`pip install --no-build-isolation -e .` compiles the file with the system g++ (setup.py, like
vLLM's setup.py builds its csrc/) into the extension module `vllm_mini._C`, which this file imports
like any other module: nothing is compiled at run time. `-march=native` decides the kernel's fast
path: on a CPU with AVX-512 the task loops use the intrinsics of csrc/cpu/cpu_types_x86.hpp,
elsewhere plain loops that the compiler vectorizes. Without the module, importing this file fails
with the fix, and the platform falls back to the `torch` backend.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from vllm_mini.attention.ops.cpu_attn_plan import KERNEL_MAX_QUERY, CpuAttentionPlan, build_plan
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

# SDPA's own GQA (enable_gqa=True) instead of repeating each KV head for its query heads:
# measured no slower on CPU for the long prompts that reach SDPA, and it saves the copies.
SDPA_GQA = True

# In a source checkout the kernel's sources sit next to the package; an installed wheel has none.
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
    """The ops interface (attention/ops/__init__.py): plans this one call, then runs the plan.

    The engine's CPU backend (attention/backends/paged.py) instead plans once per step and passes
    the layer's new K/V, which a fresh prompt attends without reading the cache back.
    """
    if max_query_len <= KERNEL_MAX_QUERY:  # no host copies needed: all of it to the kernel
        plan = CpuAttentionPlan(slice(0, None), block_table, seq_lens, query_start_loc, ())
    else:
        plan = build_plan(
            query_start_loc.tolist(),
            seq_lens.tolist(),
            query_start_loc,
            seq_lens,
            block_table,
            key_cache.shape[1],
        )
    return run_plan(query, None, None, key_cache, value_cache, plan, scale, out)


def run_plan(
    query: torch.Tensor,
    key: torch.Tensor | None,
    value: torch.Tensor | None,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    plan: CpuAttentionPlan,
    scale: float,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attend the step's query rows [T, heads, D] as `plan` splits them; returns [T, heads, D].

    key/value: this step's new K/V ([T, kv_heads, D], already written to the cache), or None to
    read every sequence's K/V from the cache.
    """
    # query may be a row-strided view of the qkv output: the kernel reads such rows in place
    # (it copies any other layout itself), and SDPA below takes the rows as they come.
    out = torch.empty(query.shape, dtype=query.dtype) if out is None else out
    rows = plan.kernel_rows
    args = (key_cache, value_cache, plan.kernel_block_table, plan.kernel_seq_lens)
    if isinstance(rows, slice):  # one range of rows: the kernel writes straight into `out`
        paged_attention_kernel(
            query[rows], *args, plan.kernel_query_start_loc, scale, out=out[rows]
        )
    elif rows is not None:
        sub_out = paged_attention_kernel(query[rows], *args, plan.kernel_query_start_loc, scale)
        out.index_copy_(0, rows, sub_out)
    for seq in plan.prefills:
        if seq.fresh and key is not None and value is not None:
            k, v = key[seq.lo : seq.hi], value[seq.lo : seq.hi]  # no gather: in hand already
        else:
            k = key_cache[seq.block_ids].flatten(0, 1)[: seq.seq_len]
            v = value_cache[seq.block_ids].flatten(0, 1)[: seq.seq_len]
        out[seq.lo : seq.hi] = _sdpa(query[seq.lo : seq.hi], k, v, seq.mask, scale)
    return out


def _sdpa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float
) -> torch.Tensor:
    """q [q_len, heads, D], k/v [seq_len, kv_heads, D] -> [q_len, heads, D]; causal if no mask."""
    group = q.shape[1] // k.shape[1]
    k, v = k.transpose(0, 1), v.transpose(0, 1)
    if group > 1 and not SDPA_GQA:
        k, v = k.repeat_interleave(group, dim=0), v.repeat_interleave(group, dim=0)
    # 4-D [1, heads, len, D] inputs: with 3-D ones CPU SDPA skips its fused kernel.
    o = F.scaled_dot_product_attention(
        q.transpose(0, 1)[None],
        k[None],
        v[None],
        attn_mask=mask,
        is_causal=mask is None,
        scale=scale,
        enable_gqa=group > 1 and SDPA_GQA,
    )
    return o[0].transpose(0, 1)


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
    out = torch.empty(query.shape, dtype=query.dtype) if out is None else out
    return _C.paged_attention(
        query, key_cache, value_cache, block_table, seq_lens, query_start_loc, scale, out, portable
    )
