"""Decode attention: each paged backend vs SDPA on the same K/V stored contiguously.

Stage 4 benchmark. For batch sizes and context lengths, builds a paged cache with shuffled blocks
(the realistic case) plus the same K/V as contiguous [batch, heads, ctx, dim] tensors, then times
one decode step (one query token per sequence) of every available backend and of
torch.nn.functional.scaled_dot_product_attention on the contiguous copy. Prints milliseconds and
the ratio SDPA time / backend time (> 1 means the paged kernel is faster than SDPA).

    python benchmarks/kernels/bench_paged_attention.py [--batch 1 8 64] [--ctx 128 512 2048]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from vllm_mini.attention.ops import get_paged_attention_ops, is_paged_attention_available


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best * 1000


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--ctx", type=int, nargs="+", default=[128, 512, 2048])
    parser.add_argument("--heads", type=int, default=9)
    parser.add_argument("--kv-heads", type=int, default=3)
    parser.add_argument("--head-size", type=int, default=64)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--backends", nargs="+", default=["torch", "cpu", "cuda"])
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    backends = [b for b in args.backends if is_paged_attention_available(b)]
    print(
        f"device {device}, threads {torch.get_num_threads()}, heads {args.heads}/{args.kv_heads}, "
        f"head size {args.head_size}, block size {args.block_size}; backends {backends}"
    )
    print(
        f"{'batch':>5} {'ctx':>5} {'sdpa ms':>8} "
        + " ".join(f"{b + ' ms':>9} {'ratio':>6}" for b in backends)
    )
    g = torch.Generator().manual_seed(0)
    bs, h, kvh, d = args.block_size, args.heads, args.kv_heads, args.head_size
    for batch in args.batch:
        for ctx in args.ctx:
            blocks_per_seq = -(-ctx // bs)
            num_blocks = batch * blocks_per_seq
            k = torch.randn(batch, ctx, kvh, d, generator=g)
            v = torch.randn(batch, ctx, kvh, d, generator=g)
            perm = torch.randperm(num_blocks, generator=g)
            block_table = perm.view(batch, blocks_per_seq).to(torch.int32)
            key_cache = torch.zeros(num_blocks, bs, kvh, d)
            value_cache = torch.zeros_like(key_cache)
            pad = blocks_per_seq * bs - ctx
            kp = F.pad(k, (0, 0, 0, 0, 0, pad)).view(batch, blocks_per_seq, bs, kvh, d)
            vp = F.pad(v, (0, 0, 0, 0, 0, pad)).view(batch, blocks_per_seq, bs, kvh, d)
            key_cache[block_table.long()] = kp
            value_cache[block_table.long()] = vp
            q = torch.randn(batch, h, d, generator=g)
            seq_lens = torch.full((batch,), ctx, dtype=torch.int32)
            qsl = torch.arange(batch + 1, dtype=torch.int32)
            tensors = [
                t.to(device) for t in (q, key_cache, value_cache, block_table, seq_lens, qsl)
            ]
            kc_, vc_ = (
                k.transpose(1, 2).to(device),
                v.transpose(1, 2).to(device),
            )  # [B, kvh, ctx, d]
            q4 = q.unsqueeze(2).to(device)  # [B, h, 1, d]

            def sdpa(q4=q4, kc_=kc_, vc_=vc_) -> None:
                F.scaled_dot_product_attention(q4, kc_, vc_, scale=d**-0.5, enable_gqa=True)
                if device == "cuda":
                    torch.cuda.synchronize()

            t_sdpa = best_time(sdpa, args.repeats)
            row = f"{batch:>5} {ctx:>5} {t_sdpa:>8.3f} "
            for name in backends:
                ops = get_paged_attention_ops(name)

                def run(ops=ops, tensors=tensors, ctx=ctx) -> None:
                    ops.paged_attention(*tensors, 1, ctx, d**-0.5)
                    if device == "cuda":
                        torch.cuda.synchronize()

                t = best_time(run, args.repeats)
                row += f"{t:>9.3f} {t_sdpa / t:>6.2f} "
            print(row)


if __name__ == "__main__":
    main()
