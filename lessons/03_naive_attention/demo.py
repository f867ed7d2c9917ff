"""Lesson 03 demo: the naive backend gives the same tokens as the paged one — and wastes memory.

.venv/bin/python lessons/03_naive_attention/demo.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.conftest import make_tiny_checkpoint  # noqa: E402
from vllm_mini import LLM, SamplingParams  # noqa: E402

with tempfile.TemporaryDirectory() as d:
    path = make_tiny_checkpoint(Path(d), "llama")
    prompts = [{"prompt_token_ids": list(range(10, 10 + n))} for n in (5, 17, 40)]
    params = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)
    naive = LLM(str(path), attention_backend="naive")
    paged = LLM(str(path), kv_cache_memory_bytes=1 << 22)
    a = [o.outputs[0].token_ids for o in naive.generate(prompts, params, use_tqdm=False)]
    b = [o.outputs[0].token_ids for o in paged.generate(prompts, params, use_tqdm=False)]
    print("naive == paged:", a == b)
    impl = naive.llm_engine.engine_core.worker.model_runner.attn_layers[0].impl
    print("naive caches left after the run:", len(impl.caches), "(freed when requests finish)")

# Why vLLM replaced this cache: a contiguous buffer must be reserved for the longest possible output.
max_model_len, lengths = 2048, [120, 300, 45, 900]
reserved = max_model_len * len(lengths)
print(
    f"4 requests of {lengths} tokens: contiguous reservation {reserved} slots, "
    f"used {sum(lengths)} -> {100 * (1 - sum(lengths) / reserved):.0f}% wasted"
)
