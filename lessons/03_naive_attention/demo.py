"""Lesson 03 demo: the naive backend gives the same tokens as the paged one — and wastes memory.

Runs a tiny random Llama (built like tests/conftest.py does) with attention_backend="naive",
then looks inside its per-request caches.

.venv/bin/python lessons/03_naive_attention/demo.py   (about 5 s)
"""

from __future__ import annotations

import math
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.conftest import make_tiny_checkpoint  # noqa: E402
from vllm_mini import LLM, SamplingParams  # noqa: E402

BLOCK_SIZE = 16


def main(model_dir: Path | None = None) -> dict[str, Any]:
    """Run the demo on `model_dir` (default: a fresh tiny random Llama); return what it found."""
    with tempfile.TemporaryDirectory() as d:
        path = model_dir or make_tiny_checkpoint(Path(d), "llama")
        lengths = (5, 17, 40, 90)
        prompts = [{"prompt_token_ids": [10 + i % 300 for i in range(n)]} for n in lengths]
        params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
        naive = LLM(str(path), attention_backend="naive")
        paged = LLM(str(path), kv_cache_memory_bytes=1 << 22)
        a = [o.outputs[0].token_ids for o in naive.generate(prompts, params, use_tqdm=False)]
        b = [o.outputs[0].token_ids for o in paged.generate(prompts, params, use_tqdm=False)]
        print("same tokens from the naive and the paged backend:", a == b)

        layer0 = naive.llm_engine.engine_core.worker.model_runner.attn_layers[0].impl
        print("\nlayer 0's naive caches (request id -> K shape [tokens, kv_heads, head_size]):")
        for req_id, (k, _) in layer0.caches.items():
            print(f"  {req_id}: {tuple(k.shape)}")
        # prompt + output - 1: the last sampled token never went through the model.
        used = [k.shape[0] for k, _ in layer0.caches.values()]
        # The runner learns which requests finished from the NEXT step's SchedulerOutput
        # (finished_req_ids), as in vLLM; so the caches above outlive the run by one step.
        naive.generate(prompts[:1], params, use_tqdm=False)
        held_after = list(layer0.caches)
        print("after one more request, caches held for:", held_after)

        max_model_len = naive.llm_engine.vllm_config.model_config.max_model_len
    contiguous = max_model_len * len(used)  # a server must reserve the longest possible sequence
    paged_slots = sum(math.ceil(n / BLOCK_SIZE) * BLOCK_SIZE for n in used)
    print(f"\nKV slots for sequences of {used} tokens (max_model_len={max_model_len}):")
    print(f"  used:                          {sum(used)}")
    print(
        f"  contiguous, reserved up front: {contiguous}  ({1 - sum(used) / contiguous:.0%} wasted)"
    )
    print(f"  paged, {BLOCK_SIZE}-token blocks on demand: {paged_slots}", end="")
    print(f"  ({1 - sum(used) / paged_slots:.0%} wasted, all in the last block)")
    return {
        "same_tokens": a == b,
        "prompt_lengths": lengths,
        "max_tokens": params.max_tokens,
        "used": used,
        "held_after": held_after,
        "contiguous": contiguous,
        "paged": paged_slots,
    }


if __name__ == "__main__":
    main()
