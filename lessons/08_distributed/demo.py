"""Lesson 08 demo: an MLP sharded by hand over two processes, then a whole model over three.

Part 1 runs solutions.tp_mlp in two processes joined by gloo: each holds half the MLP's
intermediate features, computes a partial output and one all-reduce makes it whole; both ranks
must match the unsharded MLP. Part 2 runs a model with tensor_parallel_size=1 and then with
--tp ranks (the mp executor: one process per rank), checks the greedy tokens are identical, and
prints what each rank holds (heads, KV heads, KV blocks) and what the ranks exchanged (all-reduce
calls and seconds per step).

    .venv/bin/python lessons/08_distributed/demo.py [--model DIR] [--tp 3]

The default model is SmolLM2-135M-Instruct, loaded as float32 (a GGUF file's blocks cannot be
sliced per rank here); 9 query heads and 3 KV heads split over 3 ranks as 3 and 1.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from lessons._spawn import run_on_ranks  # noqa: E402
from vllm_mini import LLM, SamplingParams  # noqa: E402

PROMPTS = ["The capital of France is", "Water boils at", "def add(a, b):"]


def part1_mlp_by_hand() -> float:
    g = torch.Generator().manual_seed(0)
    x, w_gate, w_up = torch.randn(4, 8, generator=g), torch.randn(12, 8, generator=g), None
    w_up, w_down = torch.randn(12, 8, generator=g), torch.randn(8, 12, generator=g)
    full = F.linear(F.silu(F.linear(x, w_gate)) * F.linear(x, w_up), w_down)
    file = str(Path(__file__).with_name("solutions.py"))
    outs = run_on_ranks(file, "tp_mlp", 2, x, w_gate, w_up, w_down)
    err = max((o - full).abs().max().item() for o in outs)
    print("part 1: MLP with 12 intermediate features, 6 per rank, over 2 processes")
    print(f"  max |rank output - unsharded| = {err:.2e} on both ranks (one all-reduce)")
    return err


def part2_model(model: str | None, tp: int, max_tokens: int) -> dict:
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    kwargs = dict(enforce_eager=True, dtype="float32")
    texts = {}
    for size in (1, tp):
        llm = LLM(model, tensor_parallel_size=size, **kwargs)
        start = time.perf_counter()
        outs = llm.generate(PROMPTS, params, use_tqdm=False)
        seconds = time.perf_counter() - start
        texts[size] = [o.outputs[0].text for o in outs]
        if size > 1:
            executor = llm.llm_engine.engine_core.model_executor
            ranks = executor.collective_rpc("rank_info")
            num_blocks = llm.llm_engine.engine_core.num_blocks
        llm.shutdown()
        print(f"part 2: tensor_parallel_size={size}: {seconds:.2f} s for {len(PROMPTS)} prompts")
    steps = max(1, max_tokens)  # one prefill step plus decode steps, all prompts together
    print(f"  KV blocks agreed by the {tp} ranks: {num_blocks}")
    for rank, info in enumerate(ranks):
        calls, seconds = info.tp.all_reduce_calls, info.tp.all_reduce_seconds
        print(
            f"  rank {rank}: {info.num_heads} query heads, {info.num_kv_heads} KV heads; "
            f"{calls} all-reduces ({calls / steps:.0f} per step), "
            f"{seconds * 1e3 / steps:.1f} ms per step in them"
        )
    same = texts[1] == texts[tp]
    print(f"  greedy text identical to tensor_parallel_size=1: {same}")
    for text in texts[tp]:
        print(f"    {text!r}")
    return {"identical": same, "ranks": ranks, "steps": steps}


def main(model: str | None = None, tp: int = 3, max_tokens: int = 12) -> dict:
    err = part1_mlp_by_hand()
    result = part2_model(model, tp, max_tokens)
    result["mlp_error"] = err
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--tp", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=12)
    args = parser.parse_args()
    main(args.model, args.tp, args.max_tokens)
