"""PagedAttention and reshape_and_cache in Triton.

Stage 4. Mirrors vllm/v1/attention/ops/triton_unified_attention.py (vLLM's Triton backend), reduced
to one readable kernel. One program per (query token, head): it walks the token's context one KV
block at a time, loads that block's keys [BLOCK_SIZE, HEAD_SIZE] through the block table, and
keeps an online softmax (running max m, running sum l, rescaled accumulator) as in
FlashAttention. Decode, prefill and prefill-with-context are the same code: each token only
differs in how much context it may see (`token_ctx_len`, the causal limit).

On a GPU Triton compiles this to PTX. On CPU, set TRITON_INTERPRET=1 *before* this module is
imported (triton.jit decides at decoration time) and Triton runs it in numpy — slow, but exact,
which is how the tests run it here.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _reshape_and_cache_kernel(
    key_ptr, value_ptr, key_cache_ptr, value_cache_ptr, slot_mapping_ptr,
    ROW: tl.constexpr, ROW_PAD: tl.constexpr,
):  # fmt: skip
    token = tl.program_id(0)
    slot = tl.load(slot_mapping_ptr + token).to(tl.int64)
    if slot >= 0:  # negative slots are padding
        offs = tl.arange(0, ROW_PAD)
        mask = offs < ROW
        src = token.to(tl.int64) * ROW + offs
        dst = slot * ROW + offs
        tl.store(key_cache_ptr + dst, tl.load(key_ptr + src, mask=mask), mask=mask)
        tl.store(value_cache_ptr + dst, tl.load(value_ptr + src, mask=mask), mask=mask)


@triton.jit
def _paged_attention_kernel(
    out_ptr, query_ptr, key_cache_ptr, value_cache_ptr, block_table_ptr,
    token_seq_ptr, token_ctx_len_ptr, scale, block_table_stride,
    NUM_HEADS: tl.constexpr, NUM_KV_HEADS: tl.constexpr, HEAD_SIZE: tl.constexpr,
    HEAD_PAD: tl.constexpr, BLOCK_SIZE: tl.constexpr,
):  # fmt: skip
    token = tl.program_id(0)
    head = tl.program_id(1)
    kv_head = head // (NUM_HEADS // NUM_KV_HEADS)
    seq = tl.load(token_seq_ptr + token)
    ctx_len = tl.load(token_ctx_len_ptr + token)  # this token may see positions [0, ctx_len)

    d = tl.arange(0, HEAD_PAD)
    d_mask = d < HEAD_SIZE
    q_off = (token.to(tl.int64) * NUM_HEADS + head) * HEAD_SIZE + d
    q = tl.load(query_ptr + q_off, mask=d_mask, other=0.0).to(tl.float32) * scale

    m_i = tl.full([1], float("-inf"), tl.float32)  # running max of the logits
    l_i = tl.zeros([1], tl.float32)  # running sum of exp(logit - m_i)
    acc = tl.zeros([HEAD_PAD], tl.float32)  # running sum of exp(logit - m_i) * v
    offs = tl.arange(0, BLOCK_SIZE)
    for b in range(0, tl.cdiv(ctx_len, BLOCK_SIZE)):
        block = tl.load(block_table_ptr + seq * block_table_stride + b).to(tl.int64)
        pos_mask = b * BLOCK_SIZE + offs < ctx_len
        # kv[slot, kv_head, :] for the BLOCK_SIZE slots of this physical block.
        kv_off = ((block * BLOCK_SIZE + offs)[:, None] * NUM_KV_HEADS + kv_head) * HEAD_SIZE + d[
            None, :
        ]
        kv_mask = pos_mask[:, None] & d_mask[None, :]
        k = tl.load(key_cache_ptr + kv_off, mask=kv_mask, other=0.0).to(tl.float32)
        s = tl.sum(k * q[None, :], axis=1)
        s = tl.where(pos_mask, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=0))
        alpha = tl.exp(m_i - m_new)  # rescales what was accumulated under the old max
        p = tl.exp(s - m_new)
        v = tl.load(value_cache_ptr + kv_off, mask=kv_mask, other=0.0).to(tl.float32)
        l_i = l_i * alpha + tl.sum(p, axis=0)
        acc = acc * alpha + tl.sum(p[:, None] * v, axis=0)
        m_i = m_new
    out = acc / l_i
    tl.store(out_ptr + q_off, out.to(out_ptr.dtype.element_ty), mask=d_mask)


def reshape_and_cache(
    key: torch.Tensor,
    value: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    num_tokens = key.shape[0]
    if num_tokens == 0:
        return
    row = key.shape[1] * key.shape[2]
    _reshape_and_cache_kernel[(num_tokens,)](
        key.contiguous(), value.contiguous(), key_cache, value_cache, slot_mapping,
        ROW=row, ROW_PAD=triton.next_power_of_2(row),
    )  # fmt: skip


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
    num_tokens, num_heads, head_size = query.shape
    # Per token: its sequence, and its causal context length (seq_len - q_len + j + 1).
    q_lens = query_start_loc[1:] - query_start_loc[:-1]
    token_seq = torch.repeat_interleave(
        torch.arange(len(q_lens), device=query.device, dtype=torch.int32), q_lens
    )
    j = torch.arange(num_tokens, device=query.device) - query_start_loc[:-1].long()[token_seq]
    token_ctx_len = (seq_lens[token_seq] - q_lens[token_seq] + j + 1).to(torch.int32)
    block_table = block_table.contiguous()
    _paged_attention_kernel[(num_tokens, num_heads)](
        out, query, key_cache, value_cache, block_table, token_seq, token_ctx_len, scale,
        block_table.stride(0),
        NUM_HEADS=num_heads, NUM_KV_HEADS=key_cache.shape[2], HEAD_SIZE=head_size,
        HEAD_PAD=triton.next_power_of_2(head_size), BLOCK_SIZE=key_cache.shape[1],
    )  # fmt: skip
    return out
