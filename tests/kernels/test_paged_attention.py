"""Every paged-attention kernel equals the naive reference on shuffled block tables.

Sequences are written into randomly permuted physical blocks, mixed decode and
prefill-with-context in one call, GQA ratios 1/3/8, block sizes 8/16/32, head sizes 64/128,
float32 (tolerance 1e-4) and bfloat16 (tolerance 2e-2, inputs rounded to bf16 for the reference).
The C++ kernel is also checked alone, in both of its implementations (AVX-512 and the portable
loops), on contexts long enough to be split into partitions and merged by its reduce step.
"""

from __future__ import annotations

import pytest
import torch

from vllm_mini.attention.backends.naive import naive_attention
from vllm_mini.attention.ops import get_paged_attention_ops, is_paged_attention_available

BACKENDS = [b for b in ("torch", "cpu") if is_paged_attention_available(b)]
TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 2e-3}


def _case(block_size, head_size, num_kv_heads, group, dtype, q_lens, ctx_lens, seed=0):
    g = torch.Generator().manual_seed(seed)
    num_heads = num_kv_heads * group
    seq_lens = [c + q for c, q in zip(ctx_lens, q_lens)]
    blocks_per_seq = [-(-s // block_size) for s in seq_lens]
    num_blocks = sum(blocks_per_seq) + 3
    perm = torch.randperm(num_blocks, generator=g).tolist()  # shuffled physical blocks
    block_table = torch.zeros(len(seq_lens), max(blocks_per_seq), dtype=torch.int32)
    k_all, v_all = [], []
    key_cache = torch.zeros(num_blocks, block_size, num_kv_heads, head_size, dtype=dtype)
    value_cache = torch.zeros_like(key_cache)
    for i, n in enumerate(seq_lens):
        ids = [perm.pop() for _ in range(blocks_per_seq[i])]
        block_table[i, : len(ids)] = torch.tensor(ids, dtype=torch.int32)
        k = torch.randn(n, num_kv_heads, head_size, generator=g).to(dtype)
        v = torch.randn(n, num_kv_heads, head_size, generator=g).to(dtype)
        for p in range(n):
            key_cache[ids[p // block_size], p % block_size] = k[p]
            value_cache[ids[p // block_size], p % block_size] = v[p]
        k_all.append(k)
        v_all.append(v)
    query = torch.randn(sum(q_lens), num_heads, head_size, generator=g).to(dtype)
    qsl = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32)
    return (
        query,
        key_cache,
        value_cache,
        block_table,
        torch.tensor(seq_lens, dtype=torch.int32),
        qsl,
        k_all,
        v_all,
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    ("block_size", "head_size", "num_kv_heads", "group"),
    [(16, 64, 3, 3), (8, 128, 1, 8), (32, 64, 4, 1)],
)
def test_paged_attention_matches_naive(backend, dtype, block_size, head_size, num_kv_heads, group):
    q_lens = [1, 1, 7, 20, 1]  # decodes and prefill chunks with cached context
    ctx_lens = [0, 37, 0, 45, 130]
    query, kc, vc, bt, sl, qsl, k_all, v_all = _case(
        block_size, head_size, num_kv_heads, group, dtype, q_lens, ctx_lens
    )
    scale = head_size**-0.5
    ops = get_paged_attention_ops(backend)
    out = ops.paged_attention(query, kc, vc, bt, sl, qsl, max(q_lens), int(sl.max()), scale)
    for i in range(len(q_lens)):
        lo, hi = int(qsl[i]), int(qsl[i + 1])
        ref = naive_attention(query[lo:hi], k_all[i], v_all[i], scale)
        torch.testing.assert_close(
            out[lo:hi].float(), ref.float(), atol=TOL[dtype], rtol=TOL[dtype]
        )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_reshape_and_cache_writes_slots_and_skips_padding(backend, dtype):
    num_blocks, block_size, heads, dim = 6, 8, 2, 64
    kc = torch.zeros(num_blocks, block_size, heads, dim, dtype=dtype)
    vc = torch.zeros_like(kc)
    key = torch.randn(5, heads, dim).to(dtype)
    value = torch.randn(5, heads, dim).to(dtype)
    slots = torch.tensor([3, 17, -1, 40, 8], dtype=torch.int64)
    get_paged_attention_ops(backend).reshape_and_cache(key, value, kc, vc, slots)
    flat_k, flat_v = kc.view(-1, heads, dim), vc.view(-1, heads, dim)
    for t, s in enumerate(slots.tolist()):
        if s >= 0:
            assert torch.equal(flat_k[s], key[t]) and torch.equal(flat_v[s], value[t])
    written = {s for s in slots.tolist() if s >= 0}
    untouched = [i for i in range(num_blocks * block_size) if i not in written]
    assert flat_k[untouched].abs().sum() == 0


def test_unknown_backend_is_a_clear_error():
    with pytest.raises(ValueError, match="choose one of"):
        get_paged_attention_ops("flash")


CPU_KERNEL = pytest.mark.skipif(
    not is_paged_attention_available("cpu"), reason="C++ build unavailable"
)


def _check_cpu_kernel(
    q_lens, ctx_lens, block_size, head_size, num_kv_heads, group, dtype, portable, seed=3
):
    from vllm_mini.attention.ops.cpu_paged_attn import paged_attention_kernel

    query, kc, vc, bt, sl, qsl, k_all, v_all = _case(
        block_size, head_size, num_kv_heads, group, dtype, q_lens, ctx_lens, seed=seed
    )
    scale = head_size**-0.5
    out = paged_attention_kernel(query, kc, vc, bt, sl, qsl, scale, portable=portable)
    for i in range(len(q_lens)):
        lo, hi = int(qsl[i]), int(qsl[i + 1])
        ref = naive_attention(query[lo:hi], k_all[i], v_all[i], scale)
        torch.testing.assert_close(
            out[lo:hi].float(), ref.float(), atol=TOL[dtype], rtol=TOL[dtype]
        )


@CPU_KERNEL
@pytest.mark.parametrize("portable", [False, True], ids=["vector", "portable"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_kernel_alone_handles_prefill_with_context(dtype, portable):
    """The engine sends prefills to SDPA; the C++ kernel must still be right for any q_len."""
    _check_cpu_kernel([9, 1, 33], [0, 20, 70], 16, 64, 2, 4, dtype, portable)


@CPU_KERNEL
@pytest.mark.parametrize("portable", [False, True], ids=["vector", "portable"])
@pytest.mark.parametrize(
    ("block_size", "head_size", "num_kv_heads", "group"),
    [(16, 64, 3, 3), (8, 128, 1, 8), (32, 64, 4, 1), (16, 256, 2, 2)],
)
def test_cpu_kernel_splits_long_contexts_into_partitions(
    portable, block_size, head_size, num_kv_heads, group
):
    """Contexts past 128 positions are split into partitions and merged by the reduce step.

    One decode token over 1400 positions, decodes of very different lengths (the short ones
    leave empty partitions), and a prefill chunk whose rows straddle a partition boundary.
    """
    _check_cpu_kernel(
        [1], [1400], block_size, head_size, num_kv_heads, group, torch.float32, portable
    )
    q_lens, ctx_lens = [1, 1, 1, 40, 1, 1, 1, 1, 1], [1300, 4, 700, 490, 0, 63, 64, 65, 513]
    _check_cpu_kernel(
        q_lens, ctx_lens, block_size, head_size, num_kv_heads, group, torch.float32, portable
    )


@CPU_KERNEL
@pytest.mark.parametrize("portable", [False, True], ids=["vector", "portable"])
@pytest.mark.parametrize(("head_size", "dtype"), [(64, torch.float16), (80, torch.float32)])
def test_cpu_kernel_other_dtypes_and_head_sizes(portable, head_size, dtype):
    """float16 caches, and a head size the vector code has no version for (80: plain loops)."""
    _check_cpu_kernel([1, 5, 1], [600, 30, 17], 16, head_size, 2, 3, dtype, portable)


@CPU_KERNEL
@pytest.mark.parametrize("portable", [False, True], ids=["vector", "portable"])
def test_cpu_kernel_is_batch_invariant(portable):
    """A query row's output is bit for bit the same alone, beside any neighbours, on any thread
    count, and as a decode or as one row of a prefill (a preempted request is recomputed so):
    the partitions, hence the float sums, depend on the row's own context only."""
    from vllm_mini.attention.ops.cpu_paged_attn import paged_attention_kernel

    q_lens, ctx_lens = [1, 40, 1, 1, 7], [700, 300, 5, 129, 0]
    query, kc, vc, bt, sl, qsl, _, _ = _case(16, 64, 3, 3, torch.float32, q_lens, ctx_lens)
    scale = 64**-0.5

    def run(q, rows, starts):
        return paged_attention_kernel(
            q,
            kc,
            vc,
            bt[rows],
            sl[rows],
            torch.tensor(starts, dtype=torch.int32),
            scale,
            portable=portable,
        )

    threads = torch.get_num_threads()
    try:
        together = run(query, list(range(len(q_lens))), qsl.tolist())
        for num_threads in sorted({1, 2, threads}):
            torch.set_num_threads(num_threads)
            assert torch.equal(run(query, list(range(len(q_lens))), qsl.tolist()), together)
            for i, q_len in enumerate(q_lens):
                lo = int(qsl[i])
                alone = run(query[lo : lo + q_len], [i], [0, q_len])
                assert torch.equal(alone, together[lo : lo + q_len]), (i, num_threads)
            # Row 39 of sequence 1's prefill as a decode: its context is the 339 positions before.
            short = sl.clone()
            short[1] = ctx_lens[1] + 40
            as_decode = paged_attention_kernel(
                query[int(qsl[1]) + 39 :][:1],
                kc,
                vc,
                bt[[1]],
                short[[1]],
                torch.tensor([0, 1], dtype=torch.int32),
                scale,
                portable=portable,
            )
            assert torch.equal(as_decode[0], together[int(qsl[1]) + 39])
    finally:
        torch.set_num_threads(threads)


@CPU_KERNEL
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_kernel_reads_strided_views_of_the_qkv_output(dtype):
    """The model hands q, k and v over as column slices of one qkv matrix (rows 960 floats apart
    for SmolLM2): the kernel and reshape_and_cache read those rows in place, with the bits a
    contiguous copy gives; any other layout is copied first, with the same result."""
    from vllm_mini.attention.ops import cpu_paged_attn as cpu

    query, kc, vc, bt, sl, qsl, _, _ = _case(16, 64, 2, 3, dtype, [7, 1, 20], [30, 50, 0])
    t, h, d = query.shape
    qkv = torch.randn(t, (h + 4) * d).to(dtype)  # q, k, v of 2 kv heads each, then the q slot
    qkv[:, : h * d] = query.reshape(t, -1)
    q_view = qkv[:, : h * d].view(t, h, d)
    k_view, v_view = (
        qkv[:, h * d + i * 2 * d : h * d + (i + 1) * 2 * d].view(t, 2, d) for i in (0, 1)
    )
    assert q_view.stride(0) == (h + 4) * d and not q_view.is_contiguous()
    got = cpu.paged_attention_kernel(q_view, kc, vc, bt, sl, qsl, 0.125)
    want = cpu.paged_attention_kernel(q_view.contiguous(), kc, vc, bt, sl, qsl, 0.125)
    assert torch.equal(got, want)

    slots = torch.randperm(kc.shape[0] * kc.shape[1])[:t]
    caches = [torch.zeros_like(kc) for _ in range(4)]
    cpu.reshape_and_cache(k_view, v_view, caches[0], caches[1], slots)
    cpu.reshape_and_cache(k_view.contiguous(), v_view.contiguous(), caches[2], caches[3], slots)
    assert torch.equal(caches[0], caches[2]) and torch.equal(caches[1], caches[3])

    heads_apart = q_view.transpose(0, 1).contiguous().transpose(0, 1)  # heads not one run
    assert torch.equal(cpu.paged_attention_kernel(heads_apart, kc, vc, bt, sl, qsl, 0.125), want)
