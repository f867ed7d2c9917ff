"""The real default model: greedy SmolLM2-135M-Instruct equals HF transformers token for token.

Both sides read the same GGUF file independently: transformers dequantizes it with its own GGUF
loader, we with ours (gguf_loader.py, including the Q/K un-permutation). 8 chat prompts, 32 new
tokens each, float32, through the full engine (continuous batching, paged KV, the default backend).
The GGUF method runs its float kernel here (VLLM_MINI_GGUF_INT8_ACT off): this checks the weight
decoding against HF's; the int8-activation kernel rounds x to 8 bits, which flips near-ties over
32 tokens (its greedy agreement is measured by benchmarks/quantization.py, its exactness against
its own reference tested in tests/quantization/test_gguf_q8_kernel.py).
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from vllm_mini import LLM, SamplingParams
from vllm_mini.model_executor.layers.quantization.utils import gguf_ops

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain what a GPU is in one sentence.",
    "List three fruits.",
    "What is 12 times 7?",
    "Translate 'good morning' into Spanish.",
    "Give me a name for a pet turtle.",
    "Why is the sky blue?",
]


@pytest.mark.slow
def test_greedy_generation_matches_hf(smollm2_gguf, monkeypatch):
    monkeypatch.setattr(gguf_ops, "INT8_ACTIVATIONS", False)
    monkeypatch.setenv("VLLM_MINI_GGUF_INT8_ACT", "0")  # and in any worker process
    llm = LLM()
    tok = llm.get_tokenizer()
    prompt_ids = [
        tok.encode(
            tok.apply_chat_template(
                [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
            ),
            add_special_tokens=False,
        )
        for p in PROMPTS
    ]
    params = SamplingParams(temperature=0.0, max_tokens=32, ignore_eos=True)
    ours = [
        o.outputs[0].token_ids
        for o in llm.generate([{"prompt_token_ids": p} for p in prompt_ids], params, use_tqdm=False)
    ]

    hf = AutoModelForCausalLM.from_pretrained(
        smollm2_gguf.parent, gguf_file=smollm2_gguf.name, dtype=torch.float32
    ).eval()
    # ignore_eos on our side = HF never stopping at EOS (min_new_tokens would instead *mask* EOS
    # and change the argmax).
    hf.generation_config.eos_token_id = None
    for ids, got in zip(prompt_ids, ours):
        with torch.no_grad():
            out = hf.generate(
                torch.tensor([ids]), max_new_tokens=32, do_sample=False, pad_token_id=0
            )
        assert got == out[0, len(ids) :].tolist()
