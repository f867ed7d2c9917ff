"""Structured outputs: what a token mask costs per step, and what a grammar costs to compile.

Stage 13 benchmark, default model (SmolLM2-135M-Instruct). A batch of 16 chat requests decodes
64 tokens each (min_tokens = max_tokens, so every request runs every step) with 0, 25, 50 and
100 % of them constrained, under a regex and under a JSON schema. The engine's step loop is the
same in every run; the difference is the mask work: fill one bitmask row per constrained request
(on a helper thread, beside the forward pass), apply it to the logits, advance the grammar.
Reports output tokens/s and the ratio to the unconstrained batch (goal: <= 1.15x the time),
the fully constrained batch once more with the mask filled on the engine thread before the
forward pass (`overlap_with_forward=False`), and grammar compile time cold vs cached.

    python benchmarks/structured_output.py [--batch 16] [--tokens 64] [--backend xgrammar]
"""

from __future__ import annotations

import argparse
import json
import time

from vllm_mini import LLM, SamplingParams
from vllm_mini.sampling_params import StructuredOutputsParams

# Letters and punctuation, unbounded: min_tokens never meets a grammar that must stop. (A
# bounded repeat such as {1,2000} compiles for seconds: xgrammar unrolls the count.)
REGEX = r"[a-zA-Z ,.]+"
SCHEMA = {
    "type": "object",
    "properties": {
        "story": {"type": "string"},
        "words": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["story", "words"],
}


def run(llm: LLM, prompts: list[str], constrained: int, kind: str, tokens: int) -> float:
    """Output tokens per second for one batch with `constrained` requests under a grammar."""
    so = (
        StructuredOutputsParams(regex=REGEX)
        if kind == "regex"
        else StructuredOutputsParams(json=SCHEMA)
    )
    params = [
        SamplingParams(
            temperature=0,
            max_tokens=tokens,
            min_tokens=tokens,
            ignore_eos=True,
            structured_outputs=so if i < constrained else None,
        )
        for i in range(len(prompts))
    ]
    start = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    return sum(len(o.outputs[0].token_ids) for o in outs) / elapsed


def compile_times(llm: LLM) -> tuple[float, float]:
    """Seconds from grammar_init to a ready grammar: a schema never seen, then the same again."""
    core = llm.llm_engine.engine_core
    manager = core.scheduler.structured_output_manager
    schema = {**SCHEMA, "properties": {**SCHEMA["properties"], f"k{time.time_ns()}": {}}}
    params = SamplingParams(max_tokens=1, structured_outputs=StructuredOutputsParams(json=schema))
    times = []
    for _ in range(2):
        request = llm.llm_engine.processor.process_inputs(f"c{len(times)}", "hi", params)[1]
        from vllm_mini.request import Request

        req = Request.from_engine_core_request(request, None)
        start = time.perf_counter()
        manager.grammar_init(req)
        while not manager.grammar_ready(req):
            time.sleep(0.0005)
        times.append(time.perf_counter() - start)
    return times[0], times[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--backend", default="xgrammar", choices=["xgrammar", "guidance"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    llm = LLM(
        max_model_len=512,
        max_num_seqs=args.batch,
        structured_outputs_config={"backend": args.backend, "disable_any_whitespace": True},
    )
    tok = llm.get_tokenizer()
    prompts = [
        tok.apply_chat_template(
            [{"role": "user", "content": f"Tell story number {i} about a lighthouse."}],
            tokenize=False,
            add_generation_prompt=True,
        )
        for i in range(args.batch)
    ]
    run(llm, prompts, args.batch, "json", 8)  # warm-up: compile both grammars, touch every path
    run(llm, prompts, args.batch, "regex", 8)
    manager = llm.llm_engine.engine_core.scheduler.structured_output_manager
    print(
        f"backend={args.backend} batch={args.batch} tokens={args.tokens} (median of {args.repeats})"
    )
    print(f"{'grammar':8} {'constrained':>11} {'tok/s':>8} {'time vs 0%':>11}")
    for kind in ("regex", "json"):
        base = None
        for share in (0, 25, 50, 100):
            n = args.batch * share // 100
            rates = sorted(run(llm, prompts, n, kind, args.tokens) for _ in range(args.repeats))
            rate = rates[len(rates) // 2]
            base = base or rate
            print(f"{kind:8} {share:>10}% {rate:8.1f} {base / rate:10.3f}x")
        manager.overlap_with_forward = False
        rates = sorted(
            run(llm, prompts, args.batch, kind, args.tokens) for _ in range(args.repeats)
        )
        manager.overlap_with_forward = True
        rate = rates[len(rates) // 2]
        print(
            f"{kind:8} {'100% serial':>11} {rate:8.1f} {base / rate:10.3f}x  (mask before forward)"
        )
    cold, cached = compile_times(llm)
    print(f"compile (JSON schema): cold {cold * 1e3:.2f} ms, cached {cached * 1e3:.3f} ms")
    print(
        json.dumps(
            {"compiles": manager.stats.num_compiles, "cache_hits": manager.stats.num_cache_hits}
        )
    )


if __name__ == "__main__":
    main()
