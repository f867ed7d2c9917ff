"""PagedAttention kernels behind one interface, chosen by name.

Stage 4. Mirrors vllm/v1/attention/ops/ (paged_attn.py) and the kernels in csrc/. Every
implementation provides the same two functions:

- `reshape_and_cache(key, value, key_cache, value_cache, slot_mapping)`: write the new tokens' K/V
  ([T, kv_heads, D]) into their slots of the paged cache ([num_blocks, block_size, kv_heads, D]);
  slot = block_id * block_size + offset; negative slots are padding and skipped.
- `paged_attention(query, key_cache, value_cache, block_table, seq_lens, query_start_loc,
  max_query_len, max_seq_len, scale, out=None)`: sequence i owns query rows
  query_start_loc[i]:query_start_loc[i+1]; they are the LAST q_len tokens of its seq_lens[i]-long
  context and attend causally. Decode is q_len == 1; chunked prefill / prefix hits are q_len > 1.

Names: `torch` (the reference), plus the kernels that are available on this machine. `cpu` and
`cuda` call extension modules that setup.py compiles at install time (`vllm_mini._C`,
`vllm_mini._C_cuda`); where one was not built, its backend reports itself unavailable, with the
reason logged once, and the platform picks the next one.
"""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from vllm_mini.logger import init_logger

logger = init_logger(__name__)

_MODULES = {
    "torch": "vllm_mini.attention.ops.paged_attn_torch",
    "triton": "vllm_mini.attention.ops.triton_paged_attn",
    "cpu": "vllm_mini.attention.ops.cpu_paged_attn",
    "cuda": "vllm_mini.attention.ops.cuda_paged_attn",
}
# One list: the names are the keys above.
PAGED_BACKENDS = tuple(_MODULES)


@dataclass(frozen=True)
class PagedAttentionOps:
    reshape_and_cache: Callable[..., None]
    paged_attention: Callable[..., torch.Tensor]


def _unavailable_reason(name: str) -> str | None:
    if name not in _MODULES:
        return f"unknown paged attention backend {name!r}; choose one of {list(PAGED_BACKENDS)}"
    if name == "cuda" and not torch.cuda.is_available():
        return "the cuda backend needs a CUDA device"
    if (
        name == "triton"
        and not torch.cuda.is_available()
        and os.environ.get("TRITON_INTERPRET") != "1"
    ):
        return (
            "the triton backend needs a CUDA device, or TRITON_INTERPRET=1 (set before start-up) "
            "to run in Triton's CPU interpreter"
        )
    if importlib.util.find_spec(_MODULES[name]) is None:
        return f"the {name} backend is not part of this build"
    return None


def is_paged_attention_available(name: str) -> bool:
    if _unavailable_reason(name) is not None:
        return False
    try:
        get_paged_attention_ops(name)
    except ImportError as e:  # a compiled kernel that was not built: say so, and why, once
        _log_missing_build(name, str(e))
        return False
    except (RuntimeError, OSError):
        return False
    return True


@functools.cache
def _log_missing_build(name: str, reason: str) -> None:
    logger.warning("the %s attention backend is unavailable: %s", name, reason)


def get_paged_attention_ops(name: str) -> PagedAttentionOps:
    reason = _unavailable_reason(name)
    if reason is not None:
        if name not in _MODULES:
            raise ValueError(reason)
        raise RuntimeError(reason)
    module = importlib.import_module(_MODULES[name])
    return PagedAttentionOps(module.reshape_and_cache, module.paged_attention)
