"""Lesson 04: ONE paged-attention case through ONE backend, checked against the naive reference.

The smallest program that runs a kernel the way the engine calls it: build K/V in shuffled
physical blocks (tests/kernels/test_paged_attention.py's `_case`), call
`paged_attention(...)` of the chosen backend `--repeat` times, compare with `naive_attention`
on the contiguous copy, and exit with status 1 on a mismatch. It is what you hand to the GPU tools
once the tests have found a failing shape and you have shrunk it (README section 5):

    .venv/bin/python lessons/04_paged_kv_cache/kernel_case.py --backend cpu --seq-lens 37 5
    compute-sanitizer --tool memcheck .venv/bin/python lessons/04_paged_kv_cache/kernel_case.py \\
        --backend cuda --seq-lens 37
    nsys profile -t cuda,nvtx -o case .venv/bin/python lessons/04_paged_kv_cache/kernel_case.py \\
        --backend cuda --seq-lens 2048 --repeat 20

Every query is a decode token: sequence i has seq_lens[i] positions and its last one is the
query. On CUDA each call is wrapped in an NVTX range named "paged_attention" for Nsight Systems.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.kernels.test_paged_attention import _case  # noqa: E402
from vllm_mini.attention.backends.naive import naive_attention  # noqa: E402
from vllm_mini.attention.ops import get_paged_attention_ops, is_paged_attention_available  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", default="torch", choices=["torch", "cpu", "triton", "cuda"])
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[37])
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--kv-heads", type=int, default=1)
    parser.add_argument("--group", type=int, default=1, help="query heads per KV head (GQA)")
    parser.add_argument("--head-size", type=int, default=64)
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32")
    parser.add_argument("--repeat", type=int, default=1, help="launches, for the profilers")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> float:
    """Run the case; print and return max |kernel - reference| (exit status 1 if too large)."""
    args = parse_args(argv)
    if not is_paged_attention_available(args.backend):
        sys.exit(f"backend {args.backend!r} is not available on this machine")
    dtype = DTYPES[args.dtype]
    n = len(args.seq_lens)
    query, kc, vc, bt, sl, qsl, k_all, v_all = _case(
        args.block_size,
        args.head_size,
        args.kv_heads,
        args.group,
        dtype,
        [1] * n,  # one decode query per sequence
        [s - 1 for s in args.seq_lens],  # the context before it
        seed=args.seed,
    )
    scale = args.head_size**-0.5
    ref = torch.cat(
        [naive_attention(query[i : i + 1], k_all[i], v_all[i], scale) for i in range(n)]
    )
    device = "cuda" if args.backend in ("cuda", "triton") else "cpu"
    tensors = [t.to(device) for t in (query, kc, vc, bt, sl, qsl)]
    ops = get_paged_attention_ops(args.backend)
    for _ in range(args.repeat):
        if device == "cuda":
            torch.cuda.nvtx.range_push("paged_attention")
        out = ops.paged_attention(*tensors, 1, max(args.seq_lens), scale)
        if device == "cuda":
            torch.cuda.synchronize()  # errors surface here, at the launch that caused them
            torch.cuda.nvtx.range_pop()
    err = (out.float().cpu() - ref.float()).abs().max().item()
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    verdict = "ok" if err <= tol else "MISMATCH"
    print(f"{args.backend}: max |out - ref| = {err:.2e} (tolerance {tol:.0e}): {verdict}")
    if err > tol:
        sys.exit(1)
    return err


if __name__ == "__main__":
    main()
