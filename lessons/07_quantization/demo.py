"""Lesson 07 demo: what quantization buys and costs, measured live on SmolLM2.

For each method it loads the default model, then prints the bytes of its weights (what one decode
step reads), the batch-1 decode speed, the perplexity on the start of a real English text the OS
ships (the GPL-3 licence; Python's own docs where that file is absent) and how much of float32's
greedy output it reproduces. The measuring functions are benchmarks/quantization.py's, which runs
the same table for every method.

    .venv/bin/python lessons/07_quantization/demo.py [--methods float32,gguf] [--ppl-tokens 512]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.quantization import (  # noqa: E402
    METHODS,
    PROMPTS,
    agreement,
    decode_tok_s,
    english_text,
    greedy,
    perplexity,
    scoring_model,
    weight_bytes,
)
from vllm_mini import LLM  # noqa: E402


def main(
    methods: tuple[str, ...] = ("float32", "gguf"),
    ppl_tokens: int = 512,
    decode_tokens: int = 32,
    num_prompts: int = 4,
) -> list[dict]:
    chosen = [m for m in METHODS if m.name in methods]
    source, text = english_text()
    rows, reference = [], None
    for method in chosen:
        llm = LLM(max_model_len=1024, **method.llm_kwargs)
        tokenizer = llm.get_tokenizer()
        prompts = [tokenizer.encode(p) for p in PROMPTS[:num_prompts]]
        outputs = greedy(llm, prompts, 16)
        reference = reference or outputs  # the first method is the yardstick
        model = llm.llm_engine.engine_core.worker.model_runner.model
        row = {
            "method": method.name,
            "weights_mb": weight_bytes(model) / 1e6,
            "decode_tok_s": statistics.median(decode_tok_s(llm, prompts[0], decode_tokens, 3)),
            "agreement": agreement(outputs, reference),
        }
        ids = tokenizer.encode(text)[:ppl_tokens]
        del llm, model
        gc.collect()
        row["perplexity"] = perplexity(scoring_model(method), ids, window=256)
        rows.append(row)
        gc.collect()
    print(f"perplexity: first {ppl_tokens} tokens of {source}; agreement: greedy tokens equal to")
    print(f"{chosen[0].name}'s before the first difference, over {num_prompts} chat prompts")
    print(
        f"{'method':10} {'weights MB':>10} {'decode tok/s':>12} {'perplexity':>10} {'agreement':>9}"
    )
    for r in rows:
        print(
            f"{r['method']:10} {r['weights_mb']:10.1f} {r['decode_tok_s']:12.1f} "
            f"{r['perplexity']:10.2f} {r['agreement']:9.0%}"
        )
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="float32,gguf", help="names in METHODS")
    parser.add_argument("--ppl-tokens", type=int, default=512)
    args = parser.parse_args()
    main(tuple(args.methods.split(",")), args.ppl_tokens)
