"""Decode attention: each paged backend vs SDPA on the same K/V stored contiguously.

Stage 4 benchmark. For batch sizes and context lengths, builds a paged cache with shuffled blocks
(the realistic case) plus the same K/V as contiguous [batch, kv_heads, ctx, head_size] tensors,
then times one decode step (one query token per sequence) of every available backend and of
torch.nn.functional.scaled_dot_product_attention(..., enable_gqa=True) on the contiguous copy.
Prints milliseconds and the ratio SDPA time / backend time (> 1: the paged kernel is faster).

Timings on a shared machine are noisy, so the candidates take turns: each round runs every one
of them (a warm-up call, then `--inner` timed calls), and the table shows the median over
`--rounds` rounds. `--portable` adds a column for the C++ kernel's plain-loop implementation,
the one CPUs without AVX-512 run.

    python benchmarks/kernels/bench_paged_attention.py [--batch 1 8 32 64] [--ctx 128 512 2048]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from vllm_mini.attention.ops import get_paged_attention_ops, is_paged_attention_available


def median_ms(fns: dict[str, Callable[[], None]], rounds: int, inner: int) -> dict[str, float]:
    """Median over rounds of the mean time of `inner` calls; the candidates alternate."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            fn()  # warm-up: the previous candidate has just filled the caches with its data
            start = time.perf_counter()
            for _ in range(inner):
                fn()
            times[name].append((time.perf_counter() - start) / inner * 1000)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--ctx", type=int, nargs="+", default=[128, 512, 2048])
    parser.add_argument("--heads", type=int, default=9)
    parser.add_argument("--kv-heads", type=int, default=3)
    parser.add_argument("--head-size", type=int, default=64)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--inner", type=int, default=5)
    parser.add_argument("--backends", nargs="+", default=["torch", "cpu", "cuda"])
    parser.add_argument("--portable", action="store_true", help="add the C++ plain-loop column")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = getattr(torch, args.dtype)
    # The C++ CPU kernel reads host memory: it has no place in a run on CUDA tensors.
    backends = [
        b
        for b in args.backends
        if is_paged_attention_available(b) and not (b == "cpu" and device == "cuda")
    ]
    columns = backends + (["cpu-portable"] if args.portable and "cpu" in backends else [])
    print(
        f"device {device}, threads {torch.get_num_threads()}, {args.dtype}, heads "
        f"{args.heads}/{args.kv_heads}, head size {args.head_size}, block size {args.block_size}"
        f"; median of {args.rounds} rounds"
    )
    print(
        f"{'batch':>5} {'ctx':>5} {'sdpa ms':>8} "
        + " ".join(f"{c + ' ms':>16} {'ratio':>6}" for c in columns)
    )
    g = torch.Generator().manual_seed(0)
    bs, h, kvh, d = args.block_size, args.heads, args.kv_heads, args.head_size
    sync = torch.cuda.synchronize if device == "cuda" else lambda: None
    for batch in args.batch:
        for ctx in args.ctx:
            blocks_per_seq = -(-ctx // bs)
            num_blocks = batch * blocks_per_seq
            k = torch.randn(batch, ctx, kvh, d, generator=g).to(dtype)
            v = torch.randn(batch, ctx, kvh, d, generator=g).to(dtype)
            block_table = torch.randperm(num_blocks, generator=g).view(batch, blocks_per_seq)
            key_cache = torch.zeros(num_blocks, bs, kvh, d, dtype=dtype)
            value_cache = torch.zeros_like(key_cache)
            pad = blocks_per_seq * bs - ctx
            kp = F.pad(k, (0, 0, 0, 0, 0, pad)).view(batch, blocks_per_seq, bs, kvh, d)
            vp = F.pad(v, (0, 0, 0, 0, 0, pad)).view(batch, blocks_per_seq, bs, kvh, d)
            key_cache[block_table] = kp
            value_cache[block_table] = vp
            q = torch.randn(batch, h, d, generator=g).to(dtype)
            seq_lens = torch.full((batch,), ctx, dtype=torch.int32)
            qsl = torch.arange(batch + 1, dtype=torch.int32)
            tensors = [
                t.to(device) for t in (q, key_cache, value_cache, block_table.int(), seq_lens, qsl)
            ]
            # SDPA's best case: each head's K and V contiguous, [batch, kv_heads, ctx, d].
            k4 = k.transpose(1, 2).contiguous().to(device)
            v4 = v.transpose(1, 2).contiguous().to(device)
            q4 = q.unsqueeze(2).to(device)  # [batch, heads, 1, d]

            def sdpa(q4=q4, k4=k4, v4=v4) -> None:
                F.scaled_dot_product_attention(q4, k4, v4, scale=d**-0.5, enable_gqa=True)
                sync()

            fns: dict[str, Callable[[], None]] = {"sdpa": sdpa}
            for name in backends:
                ops = get_paged_attention_ops(name)

                def run(ops=ops, tensors=tensors, ctx=ctx) -> None:
                    ops.paged_attention(*tensors, 1, ctx, d**-0.5)
                    sync()

                fns[name] = run
            if "cpu-portable" in columns:
                from vllm_mini.attention.ops.cpu_paged_attn import paged_attention_kernel

                out = torch.empty_like(tensors[0])

                def portable(tensors=tensors, out=out) -> None:
                    paged_attention_kernel(*tensors, d**-0.5, out, portable=True)

                fns["cpu-portable"] = portable
            ms = median_ms(fns, args.rounds, args.inner)
            row = f"{batch:>5} {ctx:>5} {ms['sdpa']:>8.3f} "
            row += " ".join(f"{ms[c]:>16.3f} {ms['sdpa'] / ms[c]:>6.2f}" for c in columns)
            print(row, flush=True)


if __name__ == "__main__":
    main()
