"""Shrink and expand for a batch of many LoRA adapters, in Triton (stage 9).

Mirrors vllm/lora/ops/ (its Triton shrink and expand kernels), after Punica's BGMV and SGMV
(Chen et al. 2023). Same signatures and results as torch_ops.py, which is the reference; read it
first. Where the torch reference gathers every token's matrix into one big tensor and calls a
batched matmul, these kernels read each adapter's matrix straight out of the stacked weights
through the token's (or segment's) slot, so nothing is gathered or copied.

Grid layout, and why:

- BGMV (decode: every token may use a different adapter). One program per (token, tile of
  output columns). For shrink the output columns are the rank R (small, usually one tile); for
  expand they are the layer's out features (large, so many tiles run in parallel). Each program
  loops over the reduction dimension (in for shrink, R for expand) one block at a time and
  accumulates a matrix-vector product in float32 with a broadcast multiply and a row sum: with one
  token there is no matrix-matrix product to give tensor cores.
- SGMV (prefill: runs of consecutive tokens share an adapter). One program per (segment, tile of
  BLOCK_M of the segment's tokens, tile of output columns). Now the tokens of a tile share one
  matrix, so the work is a small matrix-matrix product, done with tl.dot. The token axis of the
  grid is sized for the longest segment; programs whose tile starts past the end of their
  (shorter) segment do nothing.

Each output element belongs to exactly one program, so expand's `+=` is a plain load-add-store:
no atomics (vLLM only needs them when it splits the reduction across programs, split-K).

Slot -1 (no adapter): shrink still writes its zeros (the caller's buffer may hold anything),
expand adds nothing. Ragged sizes (in, out, R and segment lengths that are not multiples of the
block sizes) are handled by masked loads that read 0 and masked stores that write nothing.

Without a GPU, set TRITON_INTERPRET=1 before triton is imported (tests/conftest.py does) and
Triton runs these programs one by one in numpy: slow, but the same code and the same results.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# tl.dot needs every dimension of its tiles to be at least 16; smaller ones are padded up to 16
# and masked, so a rank-1 adapter costs a 16-wide tile (still one instruction on a GPU).
_MIN_DOT = 16
# Reduction blocks: the in features (shrink) are walked 64 at a time; the rank (expand) is
# usually <= 64, i.e. one block.
_BLOCK_K = 64
_BLOCK_N = 64  # expand's output columns per program
_BLOCK_M = 16  # SGMV's tokens per program


def _pow2(n: int, lo: int = 1) -> int:
    return max(lo, triton.next_power_of_2(n))


# --------------------------------------------------------------------------------------------
# BGMV: one token per program.
# --------------------------------------------------------------------------------------------


@triton.jit
def _bgmv_shrink_kernel(
    x_ptr, a_ptr, out_ptr, indices_ptr,
    K, R,
    x_stride_t, x_stride_k,
    a_stride_s, a_stride_r, a_stride_k,
    out_stride_t, out_stride_r,
    BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    token = tl.program_id(0)
    r = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)  # this program's rank rows
    r_mask = r < R
    slot = tl.load(indices_ptr + token).to(tl.int64)

    acc = tl.zeros([BLOCK_R], dtype=tl.float32)
    if slot >= 0:  # slot -1 keeps acc = 0, which is what shrink must write for it
        x_row = x_ptr + token.to(tl.int64) * x_stride_t
        a_mat = a_ptr + slot * a_stride_s
        offs_k = tl.arange(0, BLOCK_K)
        for k0 in range(0, K, BLOCK_K):
            k = k0 + offs_k
            k_mask = k < K
            xk = tl.load(x_row + k * x_stride_k, mask=k_mask, other=0.0).to(tl.float32)
            # A[slot, r, k] for this block of k: a [BLOCK_R, BLOCK_K] tile.
            a = tl.load(
                a_mat + r[:, None] * a_stride_r + k[None, :] * a_stride_k,
                mask=r_mask[:, None] & k_mask[None, :],
                other=0.0,
            ).to(tl.float32)
            acc += tl.sum(a * xk[None, :], axis=1)  # matrix-vector: multiply, sum each row
    tl.store(out_ptr + token.to(tl.int64) * out_stride_t + r * out_stride_r, acc, mask=r_mask)


@triton.jit
def _bgmv_expand_kernel(
    buf_ptr, b_ptr, out_ptr, indices_ptr,
    N, R, slice_offset,
    buf_stride_t, buf_stride_r,
    b_stride_s, b_stride_n, b_stride_r,
    out_stride_t, out_stride_n,
    BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
):  # fmt: skip
    token = tl.program_id(0)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)  # this program's output columns
    n_mask = n < N
    slot = tl.load(indices_ptr + token).to(tl.int64)
    if slot >= 0:  # slot -1: expand adds nothing, so the program does nothing at all
        buf_row = buf_ptr + token.to(tl.int64) * buf_stride_t
        b_mat = b_ptr + slot * b_stride_s
        offs_r = tl.arange(0, BLOCK_R)
        acc = tl.zeros([BLOCK_N], dtype=tl.float32)
        for r0 in range(0, R, BLOCK_R):
            r = r0 + offs_r
            r_mask = r < R
            br = tl.load(buf_row + r * buf_stride_r, mask=r_mask, other=0.0).to(tl.float32)
            # B[slot, n, r]: a [BLOCK_N, BLOCK_R] tile.
            b = tl.load(
                b_mat + n[:, None] * b_stride_n + r[None, :] * b_stride_r,
                mask=n_mask[:, None] & r_mask[None, :],
                other=0.0,
            ).to(tl.float32)
            acc += tl.sum(b * br[None, :], axis=1)
        # Add into the slice [slice_offset, slice_offset + N) of the fused output, in float32,
        # rounding once to the output's dtype.
        out = out_ptr + token.to(tl.int64) * out_stride_t + (slice_offset + n) * out_stride_n
        old = tl.load(out, mask=n_mask, other=0.0).to(tl.float32)
        tl.store(out, (old + acc).to(out_ptr.dtype.element_ty), mask=n_mask)


def bgmv_shrink(
    x: torch.Tensor, lora_a: torch.Tensor, output: torch.Tensor, indices: torch.Tensor
) -> None:
    """output[t] = lora_a[indices[t]] @ x[t]; 0 for tokens without an adapter.

    x [T, in], lora_a [S, R, in], output [T, R] float32 (written, not added), indices [T] int64.
    """
    num_tokens, k = x.shape
    rank = lora_a.shape[1]
    if num_tokens == 0:
        return
    block_r = _pow2(min(rank, 64))
    grid = (num_tokens, triton.cdiv(rank, block_r))
    _bgmv_shrink_kernel[grid](
        x, lora_a, output, indices,
        k, rank,
        x.stride(0), x.stride(1),
        lora_a.stride(0), lora_a.stride(1), lora_a.stride(2),
        output.stride(0), output.stride(1),
        BLOCK_R=block_r, BLOCK_K=min(_BLOCK_K, _pow2(k)),
    )  # fmt: skip


def bgmv_expand_slice(
    buf: torch.Tensor,
    lora_b: torch.Tensor,
    output: torch.Tensor,
    indices: torch.Tensor,
    slice_offset: int,
) -> None:
    """output[t, off:off + n] += lora_b[indices[t]] @ buf[t]; nothing for tokens without one.

    buf [T, R] float32, lora_b [S, n, R], output [T, total] (n columns from slice_offset).
    """
    num_tokens = buf.shape[0]
    width, rank = lora_b.shape[1], lora_b.shape[2]
    if num_tokens == 0:
        return
    grid = (num_tokens, triton.cdiv(width, _BLOCK_N))
    _bgmv_expand_kernel[grid](
        buf, lora_b, output, indices,
        width, rank, slice_offset,
        buf.stride(0), buf.stride(1),
        lora_b.stride(0), lora_b.stride(1), lora_b.stride(2),
        output.stride(0), output.stride(1),
        BLOCK_N=_BLOCK_N, BLOCK_R=_pow2(min(rank, 64)),
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# SGMV: one tile of a segment's tokens per program, a matrix-matrix product with tl.dot.
# --------------------------------------------------------------------------------------------


@triton.jit
def _segment_rows(seg_starts_ptr, seg_lens_ptr, seg_slots_ptr, BLOCK_M: tl.constexpr):
    """(token rows of this program's tile, their mask, the segment's slot, whether any row is
    in the segment). Grid axis 0 is the segment, axis 1 the tile of BLOCK_M of its tokens."""
    seg = tl.program_id(0)
    start = tl.load(seg_starts_ptr + seg)
    length = tl.load(seg_lens_ptr + seg)
    slot = tl.load(seg_slots_ptr + seg).to(tl.int64)
    m0 = tl.program_id(1) * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)
    rows = (start + offs_m).to(tl.int64)
    return rows, offs_m < length, slot, m0 < length


@triton.jit
def _sgmv_shrink_kernel(
    x_ptr, a_ptr, out_ptr, seg_starts_ptr, seg_lens_ptr, seg_slots_ptr,
    K, R,
    x_stride_t, x_stride_k,
    a_stride_s, a_stride_r, a_stride_k,
    out_stride_t, out_stride_r,
    BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    rows, m_mask, slot, live = _segment_rows(seg_starts_ptr, seg_lens_ptr, seg_slots_ptr, BLOCK_M)
    if live:  # a tile past the end of a short segment has nothing to do
        r = tl.program_id(2) * BLOCK_R + tl.arange(0, BLOCK_R)
        r_mask = r < R
        acc = tl.zeros([BLOCK_M, BLOCK_R], dtype=tl.float32)
        if slot >= 0:  # slot -1: the tile's rows get the zeros in acc
            a_mat = a_ptr + slot * a_stride_s
            offs_k = tl.arange(0, BLOCK_K)
            for k0 in range(0, K, BLOCK_K):
                k = k0 + offs_k
                k_mask = k < K
                # X[rows, k]: [BLOCK_M, BLOCK_K]; A[slot, r, k] read transposed: [BLOCK_K, BLOCK_R].
                xt = tl.load(
                    x_ptr + rows[:, None] * x_stride_t + k[None, :] * x_stride_k,
                    mask=m_mask[:, None] & k_mask[None, :],
                    other=0.0,
                ).to(tl.float32)
                at = tl.load(
                    a_mat + k[:, None] * a_stride_k + r[None, :] * a_stride_r,
                    mask=k_mask[:, None] & r_mask[None, :],
                    other=0.0,
                ).to(tl.float32)
                # "ieee": true float32 products. On a GPU the default would be TF32 (10-bit
                # mantissa), too coarse for float32 inputs; bfloat16 inputs lose nothing either
                # way, since a product of two bfloat16 values is exact in float32.
                acc += tl.dot(xt, at, input_precision="ieee")
        out = out_ptr + rows[:, None] * out_stride_t + r[None, :] * out_stride_r
        tl.store(out, acc, mask=m_mask[:, None] & r_mask[None, :])


@triton.jit
def _sgmv_expand_kernel(
    buf_ptr, b_ptr, out_ptr, seg_starts_ptr, seg_lens_ptr, seg_slots_ptr,
    N, R, slice_offset,
    buf_stride_t, buf_stride_r,
    b_stride_s, b_stride_n, b_stride_r,
    out_stride_t, out_stride_n,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
):  # fmt: skip
    rows, m_mask, slot, live = _segment_rows(seg_starts_ptr, seg_lens_ptr, seg_slots_ptr, BLOCK_M)
    if live & (slot >= 0):  # slot -1: expand adds nothing
        n = tl.program_id(2) * BLOCK_N + tl.arange(0, BLOCK_N)
        n_mask = n < N
        b_mat = b_ptr + slot * b_stride_s
        offs_r = tl.arange(0, BLOCK_R)
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for r0 in range(0, R, BLOCK_R):
            r = r0 + offs_r
            r_mask = r < R
            # buf[rows, r]: [BLOCK_M, BLOCK_R]; B[slot, n, r] read transposed: [BLOCK_R, BLOCK_N].
            bt = tl.load(
                buf_ptr + rows[:, None] * buf_stride_t + r[None, :] * buf_stride_r,
                mask=m_mask[:, None] & r_mask[None, :],
                other=0.0,
            ).to(tl.float32)
            wt = tl.load(
                b_mat + r[:, None] * b_stride_r + n[None, :] * b_stride_n,
                mask=r_mask[:, None] & n_mask[None, :],
                other=0.0,
            ).to(tl.float32)
            acc += tl.dot(bt, wt, input_precision="ieee")
        out = out_ptr + rows[:, None] * out_stride_t + (slice_offset + n)[None, :] * out_stride_n
        mask = m_mask[:, None] & n_mask[None, :]
        old = tl.load(out, mask=mask, other=0.0).to(tl.float32)
        tl.store(out, (old + acc).to(out_ptr.dtype.element_ty), mask=mask)


def _segments(
    seg_starts: list[int], seg_lens: list[int], seg_slots: list[int], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """The segment lists as int32 tensors for the kernel, and the tiles the longest one needs."""
    starts, lens, slots = (
        torch.tensor(v, dtype=torch.int32, device=device) for v in (seg_starts, seg_lens, seg_slots)
    )
    return starts, lens, slots, triton.cdiv(max(seg_lens, default=0), _BLOCK_M)


def sgmv_shrink(
    x: torch.Tensor,
    lora_a: torch.Tensor,
    output: torch.Tensor,
    seg_starts: list[int],
    seg_lens: list[int],
    seg_slots: list[int],
) -> None:
    """bgmv_shrink for segments of consecutive tokens that share one adapter slot (-1: none)."""
    k = x.shape[1]
    rank = lora_a.shape[1]
    starts, lens, slots, m_tiles = _segments(seg_starts, seg_lens, seg_slots, x.device)
    if m_tiles == 0:
        return
    block_r = _pow2(min(rank, 64), _MIN_DOT)
    grid = (len(seg_lens), m_tiles, triton.cdiv(rank, block_r))
    _sgmv_shrink_kernel[grid](
        x, lora_a, output, starts, lens, slots,
        k, rank,
        x.stride(0), x.stride(1),
        lora_a.stride(0), lora_a.stride(1), lora_a.stride(2),
        output.stride(0), output.stride(1),
        BLOCK_M=_BLOCK_M, BLOCK_R=block_r, BLOCK_K=min(_BLOCK_K, _pow2(k, _MIN_DOT)),
    )  # fmt: skip


def sgmv_expand_slice(
    buf: torch.Tensor,
    lora_b: torch.Tensor,
    output: torch.Tensor,
    seg_starts: list[int],
    seg_lens: list[int],
    seg_slots: list[int],
    slice_offset: int,
) -> None:
    """bgmv_expand_slice for segments: one [n, R] @ [R, out] product per segment."""
    width, rank = lora_b.shape[1], lora_b.shape[2]
    starts, lens, slots, m_tiles = _segments(seg_starts, seg_lens, seg_slots, buf.device)
    if m_tiles == 0:
        return
    grid = (len(seg_lens), m_tiles, triton.cdiv(width, _BLOCK_N))
    _sgmv_expand_kernel[grid](
        buf, lora_b, output, starts, lens, slots,
        width, rank, slice_offset,
        buf.stride(0), buf.stride(1),
        lora_b.stride(0), lora_b.stride(1), lora_b.stride(2),
        output.stride(0), output.stride(1),
        BLOCK_M=_BLOCK_M, BLOCK_N=_BLOCK_N, BLOCK_R=_pow2(min(rank, 64), _MIN_DOT),
    )  # fmt: skip
