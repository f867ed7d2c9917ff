"""LoRA's batched shrink and expand: the Triton kernels equal the torch reference.

The reference (vllm_mini/lora/ops/torch_ops.py) is first checked against the plainest possible
definition, a per-token loop of x @ A^T @ B^T; then every Triton op is compared with it on random
data: ragged sizes (in, out and token counts that are not multiples of the block sizes), adapters
of several ranks zero-padded to the stacked max rank, slot -1 (no adapter), slots used by several
tokens or segments, float32 and bfloat16, and expand into a slice of a wider output. Inputs and
weights are strided views with NaN gaps, so a stray load (a missing mask) or an ignored stride
shows up as NaN.

Without a GPU the kernels run in Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1
before triton is imported), one program at a time: the sizes are kept small.
"""

from __future__ import annotations

import pytest
import torch

from vllm_mini.lora.ops import torch_ops, triton_ops

TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2}
NUM_SLOTS = 3


def _close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    torch.testing.assert_close(actual.float(), expected.float(), rtol=TOL[dtype], atol=TOL[dtype])


def _strided(t: torch.Tensor) -> torch.Tensor:
    """`t` as a view whose rows have NaN gaps after them: the kernels must follow the strides,
    and a load that strays past a row (a missing mask) turns the result into NaN."""
    padded = torch.full((*t.shape[:-1], t.shape[-1] + 3), float("nan"), dtype=t.dtype)
    padded[..., : t.shape[-1]] = t
    return padded[..., : t.shape[-1]]


def _slot_ranks(max_rank: int) -> list[int]:
    """Each slot's true rank; the stacked weights are zero-padded up to max_rank."""
    return [max_rank, 1, max(1, max_rank // 2)]


def _stacked_a(max_rank: int, in_size: int, dtype: torch.dtype, gen: torch.Generator):
    a = torch.randn(NUM_SLOTS, max_rank, in_size, generator=gen) / in_size**0.5
    for slot, rank in enumerate(_slot_ranks(max_rank)):
        a[slot, rank:] = 0
    return _strided(a.to(dtype))


def _stacked_b(max_rank: int, out_size: int, dtype: torch.dtype, gen: torch.Generator):
    b = torch.randn(NUM_SLOTS, out_size, max_rank, generator=gen)
    for slot, rank in enumerate(_slot_ranks(max_rank)):
        b[slot, :, rank:] = 0
    return _strided(b.to(dtype))


def _indices(num_tokens: int, gen: torch.Generator) -> torch.Tensor:
    """Random slots in [-1, NUM_SLOTS), with -1 and a repeated slot whenever T allows."""
    idx = torch.randint(-1, NUM_SLOTS, (num_tokens,), generator=gen)
    if num_tokens >= 3:
        idx[:3] = torch.tensor([-1, 2, 2])
    return idx


# Segment layouts (starts, lens, slots), no zero-length segments. T=37 has a segment longer than
# one 16-token tile, a slot -1 segment, and a slot used by two segments.
SEGMENTS = {
    1: ([0], [1], [1]),
    5: ([0, 2], [2, 3], [2, -1]),
    37: ([0, 5, 6, 26], [5, 1, 20, 11], [1, -1, 0, 1]),
}


def _token_slots(num_tokens: int) -> torch.Tensor:
    starts, lens, slots = SEGMENTS[num_tokens]
    return torch.repeat_interleave(torch.tensor(slots), torch.tensor(lens))


def test_reference_matches_per_token_loop():
    """bgmv and sgmv of torch_ops equal y[t, off:off+n] += B[s] @ (A[s] @ x[t]), token by token."""
    gen = torch.Generator().manual_seed(0)
    num_tokens, in_size, out_size, max_rank, offset, total = 37, 96, 40, 16, 24, 80
    x = torch.randn(num_tokens, in_size, generator=gen)
    a = _stacked_a(max_rank, in_size, torch.float32, gen)
    b = _stacked_b(max_rank, out_size, torch.float32, gen)
    base = torch.randn(num_tokens, total, generator=gen)

    def per_token_loop(indices: torch.Tensor) -> torch.Tensor:
        y = base.clone()
        for t in range(num_tokens):
            s = int(indices[t])
            if s >= 0:
                y[t, offset : offset + out_size] += x[t] @ a[s].T @ b[s].T
        return y

    indices = _indices(num_tokens, gen)
    buf = torch.full((num_tokens, max_rank), 7.0)  # shrink must overwrite, not add
    got = base.clone()
    torch_ops.bgmv_shrink(x, a, buf, indices)
    torch_ops.bgmv_expand_slice(buf, b, got, indices, offset)
    _close(got, per_token_loop(indices), torch.float32)

    buf = torch.full((num_tokens, max_rank), 7.0)
    got = base.clone()
    torch_ops.sgmv_shrink(x, a, buf, *SEGMENTS[num_tokens])
    torch_ops.sgmv_expand_slice(buf, b, got, *SEGMENTS[num_tokens], offset)
    _close(got, per_token_loop(_token_slots(num_tokens)), torch.float32)


# Every combination: sizes not multiples of the blocks (64 in, 64 out columns, 16 tokens) included.
DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
TOKENS = pytest.mark.parametrize("num_tokens", [1, 5, 37])
RANKS = pytest.mark.parametrize("max_rank", [1, 8, 12, 16])  # 12: a ragged rank block
IN_SIZES = pytest.mark.parametrize("in_size", [64, 96, 576])
OUT_SIZES = pytest.mark.parametrize("out_size", [40, 192])


@DTYPES
@RANKS
@IN_SIZES
@TOKENS
def test_bgmv_shrink(num_tokens, in_size, max_rank, dtype):
    gen = torch.Generator().manual_seed(1)
    x = _strided(torch.randn(num_tokens, in_size, generator=gen).to(dtype))
    a = _stacked_a(max_rank, in_size, dtype, gen)
    indices = _indices(num_tokens, gen)
    expected = torch.empty(num_tokens, max_rank)
    torch_ops.bgmv_shrink(x, a, expected, indices)
    got = torch.full((num_tokens, max_rank), float("nan"))  # written, not added
    triton_ops.bgmv_shrink(x, a, got, indices)
    _close(got, expected, dtype)


@DTYPES
@RANKS
@OUT_SIZES
@TOKENS
def test_bgmv_expand_slice(num_tokens, out_size, max_rank, dtype):
    gen = torch.Generator().manual_seed(2)
    offset, total = 8, out_size + 8 + 5  # a slice in the middle of a wider fused output
    buf = _strided(torch.randn(num_tokens, max_rank, generator=gen))
    b = _stacked_b(max_rank, out_size, dtype, gen)
    indices = _indices(num_tokens, gen)
    base = torch.randn(num_tokens, total, generator=gen).to(dtype)
    expected, got = base.clone(), base.clone()
    torch_ops.bgmv_expand_slice(buf, b, expected, indices, offset)
    triton_ops.bgmv_expand_slice(buf, b, got, indices, offset)
    _close(got, expected, dtype)
    untouched = torch.cat([got[:, :offset], got[:, offset + out_size :]], dim=1)
    assert torch.equal(untouched, torch.cat([base[:, :offset], base[:, offset + out_size :]], 1))
    assert torch.equal(got[indices < 0], base[indices < 0])


@DTYPES
@RANKS
@IN_SIZES
@TOKENS
def test_sgmv_shrink(num_tokens, in_size, max_rank, dtype):
    gen = torch.Generator().manual_seed(3)
    x = _strided(torch.randn(num_tokens, in_size, generator=gen).to(dtype))
    a = _stacked_a(max_rank, in_size, dtype, gen)
    expected = torch.empty(num_tokens, max_rank)
    torch_ops.sgmv_shrink(x, a, expected, *SEGMENTS[num_tokens])
    got = torch.full((num_tokens, max_rank), float("nan"))  # slot -1 rows must become 0
    triton_ops.sgmv_shrink(x, a, got, *SEGMENTS[num_tokens])
    _close(got, expected, dtype)


@DTYPES
@RANKS
@OUT_SIZES
@TOKENS
def test_sgmv_expand_slice(num_tokens, out_size, max_rank, dtype):
    gen = torch.Generator().manual_seed(4)
    offset, total = 16, out_size + 16 + 3
    buf = _strided(torch.randn(num_tokens, max_rank, generator=gen))
    b = _stacked_b(max_rank, out_size, dtype, gen)
    base = torch.randn(num_tokens, total, generator=gen).to(dtype)
    expected, got = base.clone(), base.clone()
    torch_ops.sgmv_expand_slice(buf, b, expected, *SEGMENTS[num_tokens], offset)
    triton_ops.sgmv_expand_slice(buf, b, got, *SEGMENTS[num_tokens], offset)
    _close(got, expected, dtype)
    no_adapter = _token_slots(num_tokens) < 0
    assert torch.equal(got[no_adapter], base[no_adapter])


def test_shrink_then_expand_matches_between_bgmv_and_sgmv():
    """The same batch through BGMV (per-token slots) and SGMV (segments) gives the same layer
    output: the two kernel families agree with each other, not only with the reference."""
    gen = torch.Generator().manual_seed(5)
    num_tokens, in_size, out_size, max_rank = 37, 96, 40, 8
    x = torch.randn(num_tokens, in_size, generator=gen)
    a = _stacked_a(max_rank, in_size, torch.float32, gen)
    b = _stacked_b(max_rank, out_size, torch.float32, gen)
    outs = []
    for segmented in (False, True):
        buf = torch.empty(num_tokens, max_rank)
        y = torch.zeros(num_tokens, out_size)
        if segmented:
            triton_ops.sgmv_shrink(x, a, buf, *SEGMENTS[num_tokens])
            triton_ops.sgmv_expand_slice(buf, b, y, *SEGMENTS[num_tokens], 0)
        else:
            indices = _token_slots(num_tokens)
            triton_ops.bgmv_shrink(x, a, buf, indices)
            triton_ops.bgmv_expand_slice(buf, b, y, indices, 0)
        outs.append(y)
    _close(outs[0], outs[1], torch.float32)
