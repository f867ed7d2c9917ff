"""Lesson 04, "debug a kernel": a paged-attention decode kernel with two planted bugs, and the tools.

Stage 4 teaching material. The kernel below is a Python decode kernel with the loop structure of
`attention/ops/triton_paged_attn.py` (one task per sequence and head, walk the context one KV
block at a time through the block table, online softmax), written so that you can set a
breakpoint or a print anywhere. Two lines in it are wrong. Do not read it hunting for them: find
them the way you would on a GPU, where reading is all you can do until you have a failing case.

  1. Compare with the reference (`reference_decode`, i.e. `naive_attention` on contiguous K/V):
     `case_fails(paged_attention_decode, case)`.
  2. Shrink the failing case (`smaller_cases` lists the one-step-smaller variants; exercise
     `shrink` in exercises.py keeps taking one that still fails).
  3. Read the minimal case: which dimension must be > 1, which length must not be a multiple of
     the block size? That names the line. Fix it in `fixed_paged_attention_decode`, shrink again
     from the original case, and repeat until nothing fails.

Next: exercises.py (`shrink`, `fixed_paged_attention_decode`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from vllm_mini.attention.backends.naive import naive_attention

# kernel(query [S, H, D], key_cache, value_cache [num_blocks, block_size, H_kv, D],
#        block_table int32 [S, max_blocks], seq_lens int32 [S], scale) -> [S, H, D]
DecodeKernel = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float], torch.Tensor
]


def paged_attention_decode(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Decode attention (one query token per sequence) over a paged KV cache. Has two bugs."""
    num_seqs, num_heads, head_size = query.shape
    block_size, num_kv_heads = key_cache.shape[1], key_cache.shape[2]
    out = torch.empty_like(query)
    for s in range(num_seqs):
        seq_len = int(seq_lens[s])
        num_blocks = (seq_len + block_size - 1) // block_size
        for h in range(num_heads):
            kv_head = h % num_kv_heads
            q = query[s, h].float() * scale
            m = torch.tensor(float("-inf"))  # running max
            total = torch.tensor(0.0)  # running sum of exp(logit - m)
            acc = torch.zeros(head_size)  # running sum of exp(logit - m) * v
            for b in range(num_blocks):
                block = int(block_table[s, b])
                n = seq_len % block_size or block_size  # valid tokens in this block
                k = key_cache[block, :n, kv_head].float()  # [n, D]
                v = value_cache[block, :n, kv_head].float()
                logits = k @ q  # [n]
                m_new = torch.maximum(m, logits.max())
                p = torch.exp(logits - m_new)
                correction = torch.exp(m - m_new)
                total = total * correction + p.sum()
                acc = acc * correction + p @ v
                m = m_new
            out[s, h] = (acc / total).to(query.dtype)
    return out


@dataclass(frozen=True)
class DebugCase:
    """The shape of a decode batch: one sequence per entry of seq_lens; K/V are random."""

    seq_lens: tuple[int, ...]
    block_size: int
    num_kv_heads: int
    group: int  # query heads per KV head (GQA); num_heads = num_kv_heads * group
    head_size: int

    @property
    def num_heads(self) -> int:
        return self.num_kv_heads * self.group


@dataclass
class DecodeInputs:
    query: torch.Tensor  # [S, H, D]
    key_cache: torch.Tensor  # [num_blocks, block_size, H_kv, D]
    value_cache: torch.Tensor
    block_table: torch.Tensor  # int32 [S, max_blocks], zero padded
    seq_lens: torch.Tensor  # int32 [S]
    keys: list[torch.Tensor]  # per sequence, contiguous [seq_len, H_kv, D]: the reference's view
    values: list[torch.Tensor]
    scale: float


def make_inputs(case: DebugCase, seed: int = 0) -> DecodeInputs:
    """Random K/V written into SHUFFLED physical blocks, so a kernel must follow the block table.

    Unused slots (the tail of each sequence's last block, and the spare blocks) hold random
    garbage, as a reused block does in the engine: reading one changes the result.
    """
    g = torch.Generator().manual_seed(seed)
    bs, hkv, d = case.block_size, case.num_kv_heads, case.head_size
    blocks_per_seq = [-(-n // bs) for n in case.seq_lens]
    num_blocks = sum(blocks_per_seq) + 2
    key_cache = torch.randn(num_blocks, bs, hkv, d, generator=g)
    value_cache = torch.randn(num_blocks, bs, hkv, d, generator=g)
    perm = torch.randperm(num_blocks, generator=g).tolist()
    block_table = torch.zeros(len(case.seq_lens), max(blocks_per_seq), dtype=torch.int32)
    keys, values = [], []
    for i, n in enumerate(case.seq_lens):
        ids = [perm.pop() for _ in range(blocks_per_seq[i])]
        block_table[i, : len(ids)] = torch.tensor(ids, dtype=torch.int32)
        # The reference sees exactly what the cache holds for positions 0..n-1.
        keys.append(key_cache[ids].flatten(0, 1)[:n].clone())
        values.append(value_cache[ids].flatten(0, 1)[:n].clone())
    query = torch.randn(len(case.seq_lens), case.num_heads, d, generator=g)
    seq_lens = torch.tensor(case.seq_lens, dtype=torch.int32)
    return DecodeInputs(query, key_cache, value_cache, block_table, seq_lens, keys, values, d**-0.5)


def reference_decode(inputs: DecodeInputs) -> torch.Tensor:
    """The oracle: stage 3's naive attention on each sequence's contiguous K/V."""
    rows = [
        naive_attention(inputs.query[i : i + 1], k, v, inputs.scale)
        for i, (k, v) in enumerate(zip(inputs.keys, inputs.values))
    ]
    return torch.cat(rows)


def case_fails(kernel: DecodeKernel, case: DebugCase, seed: int = 0) -> bool:
    """Does `kernel` disagree with the reference on this case (float32, tolerance 1e-4)?"""
    x = make_inputs(case, seed)
    got = kernel(x.query, x.key_cache, x.value_cache, x.block_table, x.seq_lens, x.scale)
    return not torch.allclose(got, reference_decode(x), atol=1e-4, rtol=1e-4)


def smaller_cases(case: DebugCase) -> Iterator[DebugCase]:
    """Every case one step smaller than `case`, big steps first.

    A case is *1-minimal* for a failure when it fails and none of these does: every dimension is
    then as small as the failure allows, and the ones that are not 1 are the clue.
    """
    lens = case.seq_lens
    for i in range(len(lens)):
        if len(lens) > 1:
            yield dataclasses.replace(case, seq_lens=lens[:i] + lens[i + 1 :])
    for i, n in enumerate(lens):
        for smaller in dict.fromkeys((n // 2, n - case.block_size, n - 1)):
            if smaller >= 1:
                yield dataclasses.replace(case, seq_lens=lens[:i] + (smaller,) + lens[i + 1 :])
    if case.block_size > 1:
        yield dataclasses.replace(case, block_size=case.block_size // 2)
    if case.num_kv_heads > 1:
        yield dataclasses.replace(case, num_kv_heads=case.num_kv_heads - 1)
    if case.group > 1:
        yield dataclasses.replace(case, group=case.group - 1)
    if case.head_size > 1:
        yield dataclasses.replace(case, head_size=case.head_size // 2)
