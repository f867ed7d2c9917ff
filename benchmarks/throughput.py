"""Offline throughput: vllm_mini's continuous batching vs HF transformers' static batching.

Mirrors vllm/benchmarks/throughput.py in spirit, with nano-vllm's workload recipe scaled for a
2-core CPU: 64 requests, prompts of 32-512 random tokens, 32-256 output tokens each, ignore_eos.
Both engines run in this process on the same workload; we print output tokens/s and the ratio.

HF `generate` runs static batches of `--hf-batch-size` requests, left-padded; a batch runs until its
longest request is done, so only each request's own output tokens count as useful work.
We also print KV-cache waste: for vllm_mini (allocated slots minus tokens stored, over allocated,
averaged over steps) and for a contiguous allocator that reserves prompt + max_tokens per request.

    python benchmarks/throughput.py [--num-requests 64] [--skip-hf] [--backend cpu]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_hf_peer, random_workload  # noqa: E402

from vllm_mini import LLM, SamplingParams  # noqa: E402


def run_vllm_mini(args, prompts, out_lens) -> tuple[float, int, float]:
    llm = LLM(
        args.model,
        attention_backend=args.backend,
        max_num_seqs=args.max_num_seqs,
        dtype=args.dtype,
    )
    engine = llm.llm_engine
    # Warm-up (kernel build, allocator) outside the timed region.
    llm.generate(
        [{"prompt_token_ids": prompts[0][:16]}], SamplingParams(max_tokens=4), use_tqdm=False
    )
    for i, (p, n) in enumerate(zip(prompts, out_lens)):
        engine.add_request(
            f"b{i}",
            {"prompt_token_ids": p},
            SamplingParams(temperature=0, max_tokens=n, ignore_eos=True),
        )
    kv = engine.engine_core.scheduler.kv_cache_manager
    sched = engine.engine_core.scheduler
    waste, steps, total = 0.0, 0, 0
    start = time.perf_counter()
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                total += len(out.outputs[0].token_ids)
        allocated = sum(len(b) for b in kv.req_to_blocks.values()) * kv.block_size
        stored = sum(r.num_computed_tokens for r in sched.running)
        if allocated:
            waste += (allocated - stored) / allocated
            steps += 1
    elapsed = time.perf_counter() - start
    return elapsed, total, waste / max(steps, 1)


@torch.inference_mode()
def run_hf(args, prompts, out_lens) -> tuple[float, int]:
    model = load_hf_peer(args.model)
    model.generation_config.eos_token_id = None  # like ignore_eos: never stop early
    pad = 0
    start = time.perf_counter()
    useful = 0
    for b in range(0, len(prompts), args.hf_batch_size):
        batch, lens = prompts[b : b + args.hf_batch_size], out_lens[b : b + args.hf_batch_size]
        width = max(len(p) for p in batch)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
        model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max(lens),
            do_sample=False,
            pad_token_id=pad,
        )
        useful += sum(lens)
    return time.perf_counter() - start, useful


def contiguous_waste(prompts, out_lens) -> float:
    """A contiguous allocator must reserve prompt + max_tokens up front (vLLM paper, section 3).

    Averaged over a request's life, it stores on average prompt + out/2 of those slots.
    """
    reserved = sum(len(p) + n for p, n in zip(prompts, out_lens))
    used = sum(len(p) + n / 2 for p, n in zip(prompts, out_lens))
    return (reserved - used) / reserved


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None)
    parser.add_argument("--num-requests", type=int, default=64)
    parser.add_argument("--min-input", type=int, default=32)
    parser.add_argument("--max-input", type=int, default=512)
    parser.add_argument("--min-output", type=int, default=32)
    parser.add_argument("--max-output", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hf-batch-size", type=int, default=8)
    parser.add_argument("--max-num-seqs", type=int, default=64)
    parser.add_argument(
        "--backend", default=None, help="attention backend (default: best available)"
    )
    parser.add_argument("--skip-hf", action="store_true")
    parser.add_argument(
        "--dtype", default="auto", help="vllm_mini's dtype (float32, bfloat16: the float path)"
    )
    args = parser.parse_args()

    prompts, out_lens = random_workload(
        args.num_requests,
        args.min_input,
        args.max_input,
        args.min_output,
        args.max_output,
        args.seed,
    )
    print(
        f"workload: {len(prompts)} requests, {sum(map(len, prompts))} prompt tokens, "
        f"{sum(out_lens)} output tokens, torch threads {torch.get_num_threads()}"
    )
    t, n, waste = run_vllm_mini(args, prompts, out_lens)
    ours = n / t
    print(f"vllm_mini: {n} tokens in {t:.1f} s = {ours:.1f} output tok/s")
    print(
        f"KV-cache waste: paged {100 * waste:.1f}% vs contiguous reservation "
        f"{100 * contiguous_waste(prompts, out_lens):.1f}%"
    )
    if not args.skip_hf:
        t_hf, n_hf = run_hf(args, prompts, out_lens)
        theirs = n_hf / t_hf
        print(
            f"HF generate (static batches of {args.hf_batch_size}): {n_hf} tokens in {t_hf:.1f} s "
            f"= {theirs:.1f} output tok/s"
        )
        print(f"ratio vllm_mini / HF = {ours / theirs:.2f}x")


if __name__ == "__main__":
    main()
