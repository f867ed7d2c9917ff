"""Forward context: per-step data every layer can read without threading it through forward().

Mirrors vllm/forward_context.py. The model runner sets the attention metadata for one forward pass;
`Attention` layers deep inside the model read it. Model code stays a plain stack of modules.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from vllm_mini.attention.backends.abstract import AttentionMetadata


@dataclass
class ForwardContext:
    attn_metadata: AttentionMetadata


_forward_context: ForwardContext | None = None


@contextlib.contextmanager
def set_forward_context(attn_metadata: AttentionMetadata) -> Iterator[None]:
    global _forward_context
    prev = _forward_context
    _forward_context = ForwardContext(attn_metadata=attn_metadata)
    try:
        yield
    finally:
        _forward_context = prev


def get_forward_context() -> ForwardContext:
    if _forward_context is None:
        raise RuntimeError("attention ran outside set_forward_context(); the model runner sets it")
    return _forward_context
