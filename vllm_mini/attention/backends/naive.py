"""Naive attention: a contiguous KV cache per sequence and the textbook math.

Stage 3. Mirrors the role of vllm/v1/attention/backends/ (any backend's `forward`), written as
plainly as possible: softmax(Q K^T * scale + causal_mask) V, with grouped-query attention by
repeating the KV heads. Every faster kernel in `attention/ops/` is tested against `naive_attention`.

The cache here is what vLLM replaced: one growing tensor per sequence. It works, but a sequence's
memory must be contiguous, so the engine cannot share or page it (read the PagedAttention paper,
section 3, for why that wastes memory). Next: backends/paged.py.
"""

from __future__ import annotations

import torch

from vllm_mini.attention.backends.abstract import (
    AttentionBackend,
    AttentionImpl,
    AttentionMetadata,
)


def naive_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float
) -> torch.Tensor:
    """Causal attention for ONE sequence whose queries are the last q_len of kv_len positions.

    query: [q_len, num_heads, head_size]; key/value: [kv_len, num_kv_heads, head_size].
    Returns [q_len, num_heads, head_size] in query's dtype (math is done in float32).
    """
    q_len, num_heads, _ = query.shape
    kv_len, num_kv_heads, _ = key.shape
    if num_heads % num_kv_heads != 0:
        raise ValueError(
            f"num_heads ({num_heads}) must be a multiple of num_kv_heads ({num_kv_heads})"
        )
    # GQA: each group of num_heads // num_kv_heads query heads shares one KV head.
    group = num_heads // num_kv_heads
    k = key.float().repeat_interleave(group, dim=1)  # [kv_len, num_heads, head_size]
    v = value.float().repeat_interleave(group, dim=1)
    q = query.float()

    # scores[h, i, j] = q_i . k_j for head h.
    scores = torch.einsum("qhd,khd->hqk", q, k) * scale  # [num_heads, q_len, kv_len]
    # Query i sits at absolute position (kv_len - q_len + i); it may see keys 0..that position.
    # Built on the query's device: a CPU mask against CUDA scores is an error.
    q_pos = torch.arange(kv_len - q_len, kv_len, device=query.device).unsqueeze(1)  # [q_len, 1]
    k_pos = torch.arange(kv_len, device=query.device).unsqueeze(0)  # [1, kv_len]
    scores = scores.masked_fill(k_pos > q_pos, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    out = torch.einsum("hqk,khd->qhd", probs, v)  # [q_len, num_heads, head_size]
    return out.to(query.dtype)


class NaiveAttentionBackend(AttentionBackend):
    name = "naive"
    # Each request's K/V live in its own growing tensors, so the runner allocates no paged cache
    # and no block can be shared: the config turns prefix caching off for this backend.
    uses_paged_kv_cache = False
    supports_prefix_caching = False

    @classmethod
    def make_impl(
        cls, num_heads: int, head_size: int, scale: float, num_kv_heads: int
    ) -> NaiveAttentionImpl:
        return NaiveAttentionImpl(num_heads, head_size, scale, num_kv_heads)


class NaiveAttentionImpl(AttentionImpl):
    """Keeps each request's K and V in its own contiguous tensor, grown every step.

    The engine's paged KV tensor is ignored: this backend is the reference, not the fast path.
    `free_requests` drops a request's tensors when it finishes or is preempted.
    """

    def __init__(self, num_heads: int, head_size: int, scale: float, num_kv_heads: int) -> None:
        super().__init__(num_heads, head_size, scale, num_kv_heads)
        # req_id -> (key [len, num_kv_heads, head_size], value [len, num_kv_heads, head_size])
        self.caches: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        kv_cache: torch.Tensor | None,
        attn_metadata: AttentionMetadata,
    ) -> torch.Tensor:
        # query: [num_tokens, num_heads, head_size]
        # key, value: [num_tokens, num_kv_heads, head_size]
        out = torch.empty_like(query)
        starts = attn_metadata.query_start_loc_cpu
        for i, req_id in enumerate(attn_metadata.req_ids):
            lo, hi = starts[i], starts[i + 1]
            past_k, past_v = self.caches.get(req_id, (key[:0], value[:0]))
            k = torch.cat([past_k, key[lo:hi]])
            v = torch.cat([past_v, value[lo:hi]])
            if k.shape[0] != attn_metadata.seq_lens_cpu[i]:
                raise RuntimeError(
                    f"naive KV cache of request {req_id} holds {k.shape[0]} tokens, "
                    f"expected {attn_metadata.seq_lens_cpu[i]}"
                )
            self.caches[req_id] = (k, v)
            out[lo:hi] = naive_attention(query[lo:hi], k, v, self.scale)
        return out

    def free_requests(self, req_ids: set[str]) -> None:
        for req_id in req_ids:
            self.caches.pop(req_id, None)
