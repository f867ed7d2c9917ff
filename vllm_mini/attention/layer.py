"""Attention layer: what a model calls; the backend behind it does the work.

Stage 3. Mirrors vllm/model_executor/layers/attention/attention.py. A model builds
`Attention(num_heads, head_size, scale, num_kv_heads, prefix=...)` and calls it with q, k, v for
all tokens of the step, flattened across requests. The layer fetches this step's metadata from the
forward context and the KV cache the model runner bound to it (`self.kv_cache`), so the model
itself never sees either.

Stage 6 adds `vllm_mini::unified_attention`, a custom op (torch.library) that wraps this call. Under
torch.compile the layer calls attention through it, so the compiler sees one opaque node per
layer with only tensors and the layer's name as inputs: it never traces the backend's Python
(block tables, `.tolist()`, kernels of its own), and the graph splits there (vLLM's
`splitting_ops`; mirrors unified_attention_with_output in
vllm/model_executor/layers/attention/attention.py). Eager runs call the backend directly.
Next: backends/naive.py.
"""

from __future__ import annotations

import torch
from torch import nn

from vllm_mini.attention.selector import get_attn_impl
from vllm_mini.config import get_current_vllm_config
from vllm_mini.forward_context import get_forward_context

# The layers the custom op can reach by name: the runner points this at its model's
# compilation_config.static_forward_context before each forward (several engines may live in one
# process, each with its own "model.layers.0.self_attn.attn").
_static_forward_context: dict[str, Attention] = {}


def set_static_forward_context(layers: dict[str, Attention]) -> None:
    global _static_forward_context
    _static_forward_context = layers


class Attention(nn.Module):
    def __init__(
        self,
        num_heads: int,
        head_size: int,
        scale: float,
        num_kv_heads: int | None = None,
        prefix: str = "",
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_size = head_size
        self.num_kv_heads = num_kv_heads or num_heads
        self.layer_name = prefix
        backend = get_current_vllm_config().attention_config.backend or "naive"
        self.impl = get_attn_impl(backend, num_heads, head_size, scale, self.num_kv_heads)
        # Registered by name, as vLLM does, for the custom op below to find.
        get_current_vllm_config().compilation_config.static_forward_context[prefix] = self
        # Bound by the model runner once the KV cache is allocated (paged backends only).
        self.kv_cache: torch.Tensor | None = None

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        # q: [num_tokens, num_heads * head_size]; k, v: [num_tokens, num_kv_heads * head_size]
        attn_metadata = get_forward_context().attn_metadata
        num_tokens = q.shape[0]  # explicit sizes, not -1: no division for the compiler to solve
        q = q.view(num_tokens, self.num_heads, self.head_size)
        k = k.view(num_tokens, self.num_kv_heads, self.head_size)
        v = v.view(num_tokens, self.num_kv_heads, self.head_size)
        if torch.compiler.is_compiling():
            out = torch.ops.vllm_mini.unified_attention(q, k, v, self.layer_name)
        else:
            out = self.impl.forward(q, k, v, self.kv_cache, attn_metadata)
        return out.reshape(num_tokens, self.num_heads * self.head_size)


@torch.library.custom_op("vllm_mini::unified_attention", mutates_args=())
def unified_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer_name: str
) -> torch.Tensor:
    """q: [T, heads, D], k/v: [T, kv_heads, D] -> [T, heads, D], through the named layer's backend.

    The KV cache and the metadata are not arguments: the op finds them from the layer name and the
    forward context at run time, so the compiled graph stays the same whatever the step holds.
    """
    layer = _static_forward_context[layer_name]
    meta = get_forward_context().attn_metadata
    return layer.impl.forward(q, k, v, layer.kv_cache, meta)


@unified_attention.register_fake
def _(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer_name: str) -> torch.Tensor:
    # What the compiler needs to know to trace around the op: the output's shape and dtype.
    return torch.empty_like(q)
