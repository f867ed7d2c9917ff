"""Paged attention in plain torch: the reference every kernel is tested against.

Stage 4. Mirrors what vllm/v1/attention/ops/paged_attn.py and csrc/attention/*.cu compute. For each
sequence: follow its block table to gather its K/V from the paged cache into contiguous tensors,
then do causal attention for its new tokens (the last q_len of seq_len positions). Readable, and
fast enough on CPU thanks to SDPA; the C++/Triton/CUDA kernels avoid the gather copy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def reshape_and_cache(
    key: torch.Tensor,
    value: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Write each new token's K/V into its slot. key: [T, kv_heads, D]; cache: [blocks, bs, kv_heads, D]."""
    block_size = key_cache.shape[1]
    valid = slot_mapping >= 0  # negative slots are padding
    slots = slot_mapping[valid]
    flat_k = key_cache.view(-1, *key_cache.shape[2:])  # [blocks * bs, kv_heads, D]
    flat_v = value_cache.view(-1, *value_cache.shape[2:])
    del block_size
    flat_k.index_copy_(0, slots, key[valid])
    flat_v.index_copy_(0, slots, value[valid])


def gather_kv(cache: torch.Tensor, block_ids: torch.Tensor, seq_len: int) -> torch.Tensor:
    """[blocks, bs, H, D] + this sequence's block ids -> its first seq_len tokens, [seq_len, H, D]."""
    block_size = cache.shape[1]
    num_blocks = -(-seq_len // block_size)
    return cache[block_ids[:num_blocks].long()].flatten(0, 1)[:seq_len]


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
    """query: [T, heads, D] -> [T, heads, D]; see attention/ops/__init__.py for the contract."""
    out = torch.empty_like(query) if out is None else out
    starts = query_start_loc.tolist()
    lens = seq_lens.tolist()
    num_heads, num_kv_heads = query.shape[1], key_cache.shape[2]
    for i, seq_len in enumerate(lens):
        lo, hi = starts[i], starts[i + 1]
        q_len = hi - lo
        k = gather_kv(key_cache, block_table[i], seq_len)  # [seq_len, kv_heads, D]
        v = gather_kv(value_cache, block_table[i], seq_len)
        q = query[lo:hi].transpose(0, 1)  # [heads, q_len, D]
        # GQA: repeat each KV head for its query heads. (SDPA's enable_gqa would avoid the copy,
        # but on CPU it falls back to the slower unfused path.)
        group = num_heads // num_kv_heads
        k = k.transpose(0, 1).repeat_interleave(group, dim=0)
        v = v.transpose(0, 1).repeat_interleave(group, dim=0)
        mask, causal = None, False
        if q_len == seq_len:
            causal = True  # a fresh prompt: plain causal attention, SDPA's fused path
        elif q_len > 1:
            # Query j sits at position seq_len - q_len + j and sees keys up to that position.
            q_pos = torch.arange(seq_len - q_len, seq_len, device=query.device).unsqueeze(1)
            mask = torch.arange(seq_len, device=query.device).unsqueeze(0) <= q_pos
        # 4-D [1, heads, len, D] inputs: with 3-D ones CPU SDPA skips its fused kernel.
        o = F.scaled_dot_product_attention(
            q[None], k[None], v[None], attn_mask=mask, is_causal=causal, scale=scale
        )
        out[lo:hi] = o[0].transpose(0, 1)
    return out
