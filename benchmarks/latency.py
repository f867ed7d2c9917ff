"""Batch-1 decode speed: vllm_mini vs HF generate, and the memory-bandwidth roof.

Decoding one sequence reads every weight once per token, so tokens/s cannot beat
(memory bandwidth / weight bytes). We measure the machine's copy bandwidth with a large tensor
copy and print that roof next to both engines' figures.

    python benchmarks/latency.py [--prompt-len 32] [--output-len 128]
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


def copy_bandwidth_gbs(nbytes: int = 1 << 29, repeats: int = 5) -> float:
    src = torch.ones(nbytes // 4)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t)
    return 2 * nbytes / best / 1e9  # a copy reads and writes every byte


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--backend", default=None)
    parser.add_argument("--skip-hf", action="store_true")
    parser.add_argument(
        "--dtype", default="auto", help="vllm_mini's dtype (float32, bfloat16: the float path)"
    )
    args = parser.parse_args()
    prompts, _ = random_workload(1, args.prompt_len, args.prompt_len, 1, 1, seed=0)
    prompt = prompts[0]
    n = args.output_len

    llm = LLM(args.model, attention_backend=args.backend, dtype=args.dtype)
    params = SamplingParams(temperature=0, max_tokens=n, ignore_eos=True)
    llm.generate([{"prompt_token_ids": prompt}], SamplingParams(max_tokens=8), use_tqdm=False)
    t = time.perf_counter()
    llm.generate([{"prompt_token_ids": prompt}], params, use_tqdm=False)
    ours = n / (time.perf_counter() - t)
    weight_bytes = sum(
        p.numel() * p.element_size()
        for p in llm.llm_engine.engine_core.worker.model_runner.model.parameters()
    )
    bw = copy_bandwidth_gbs()
    print(f"vllm_mini batch-1 decode: {ours:.1f} tok/s (prompt {args.prompt_len}, output {n})")
    print(
        f"roof: {bw:.1f} GB/s copy bandwidth / {weight_bytes / 1e6:.0f} MB weights "
        f"= {bw * 1e9 / weight_bytes:.1f} tok/s"
    )
    if not args.skip_hf:
        model = load_hf_peer(args.model)
        model.generation_config.eos_token_id = None  # like ignore_eos: never stop early
        ids = torch.tensor([prompt])
        with torch.inference_mode():
            model.generate(ids, max_new_tokens=8, do_sample=False)
            t = time.perf_counter()
            model.generate(ids, max_new_tokens=n, do_sample=False, pad_token_id=0)
            theirs = n / (time.perf_counter() - t)
        print(f"HF generate batch-1 decode: {theirs:.1f} tok/s")
        print(f"ratio vllm_mini / HF = {ours / theirs:.2f}x")


if __name__ == "__main__":
    main()
