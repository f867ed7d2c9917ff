"""Lesson 11 demo: prompt-lookup speculation on one copy-heavy chat prompt, step by step.

Loads the default model (SmolLM2-135M-Instruct) twice, without and with the n-gram proposer,
and asks both to repeat a short paragraph. For the speculative engine it prints, for the first
decode steps, the drafts the proposer guessed and the tokens the target emitted, then the
tokens per step, the acceptance figures (SpecDecodingStats) and the decode speed of both
engines. Greedy speculation must not change a single token, and the demo checks that it did not.

    .venv/bin/python lessons/11_speculative_decoding/demo.py [--k 4] [--max-tokens 96]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from vllm_mini import LLM, SamplingParams  # noqa: E402
from vllm_mini.spec_decode.metrics import SpecDecodingStats  # noqa: E402

TEXT = (
    "The library opens at nine in the morning and closes at six in the evening. Members may "
    "borrow up to five books at a time for three weeks. Late returns cost ten cents a day."
)
PROMPT = f"Repeat the following text exactly, word for word:\n\n{TEXT}"


def record_steps(llm: LLM) -> list[dict]:
    """Wrap the engine core's step so every step's drafts and emitted tokens are kept."""
    core = llm.llm_engine.engine_core
    step, steps = core.step, []

    def recording_step():
        outputs = step()
        so = core.last_scheduler_output
        for out in outputs:
            steps.append(
                {
                    "drafts": so.scheduled_spec_decode_tokens.get(out.request_id, []),
                    "emitted": list(out.new_token_ids),
                    "num_scheduled": so.num_scheduled_tokens.get(out.request_id, 0),
                }
            )
        return outputs

    core.step = recording_step  # an instance attribute shadows the method
    return steps


def generate(llm: LLM, max_tokens: int) -> tuple[list[int], float, list[dict]]:
    """(token ids, decode tok/s after the first token, the steps) for the prompt, greedy."""
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    messages = [[{"role": "user", "content": PROMPT}]]
    llm.chat(messages, SamplingParams(temperature=0.0, max_tokens=4), use_tqdm=False)  # warm up
    scheduler = llm.llm_engine.engine_core.scheduler
    if scheduler.spec_decoding_stats is not None:  # count the measured request only
        scheduler.spec_decoding_stats = SpecDecodingStats(scheduler.num_spec_tokens)
    steps = record_steps(llm)
    out = llm.chat(messages, params, use_tqdm=False)[0]
    tokens = list(out.outputs[0].token_ids)
    elapsed = out.metrics.last_token_time - out.metrics.first_token_time
    return tokens, (len(tokens) - 1) / elapsed, steps


def main(k: int = 4, max_tokens: int = 96, show_steps: int = 8) -> dict:
    spec = {"method": "ngram", "num_speculative_tokens": k, "prompt_lookup_min": 2,
            "prompt_lookup_max": 4}  # fmt: skip
    start = time.perf_counter()
    plain = LLM(enable_prefix_caching=False)
    ngram = LLM(enable_prefix_caching=False, speculative_config=spec)
    tok = ngram.get_tokenizer()
    plain_tokens, plain_speed, plain_steps = generate(plain, max_tokens)
    spec_tokens, spec_speed, spec_steps = generate(ngram, max_tokens)

    print(f"prompt: {PROMPT!r}\n")
    print(f"first decode steps with ngram (k={k}, lookup 2-4): drafts -> emitted tokens")
    decode_steps = spec_steps[1:]  # step 0 is the prefill: it samples the first token
    for i, s in enumerate(decode_steps[:show_steps]):
        drafts = [tok.decode([t]) for t in s["drafts"]]
        emitted = [tok.decode([t]) for t in s["emitted"]]
        accepted = max(len(s["emitted"]) - 1, 0) if s["drafts"] else 0
        print(f"  step {i + 1:2}: drafts {drafts!s:<44} -> {emitted}  ({accepted} accepted)")

    stats = ngram.llm_engine.engine_core.scheduler.spec_decoding_stats
    identical = plain_tokens == spec_tokens
    row = {
        "plain_steps": len(plain_steps),
        "spec_steps": len(spec_steps),
        "num_tokens": len(spec_tokens),
        "acceptance_rate": stats.acceptance_rate,
        "mean_acceptance_length": stats.mean_acceptance_length,
        "plain_tok_s": plain_speed,
        "spec_tok_s": spec_speed,
        "identical": identical,
    }
    print(f"\noutput ({len(spec_tokens)} tokens): {tok.decode(spec_tokens)!r}")
    print(f"identical to plain greedy decoding: {identical}")
    print(
        f"engine steps: plain {row['plain_steps']}, ngram {row['spec_steps']} "
        f"({len(spec_tokens) / row['spec_steps']:.2f} tokens per step)"
    )
    print(stats.summary())
    print(
        f"decode tok/s (after the first token): plain {plain_speed:.1f}, ngram {spec_speed:.1f} "
        f"({spec_speed / plain_speed:.2f}x); whole demo {time.perf_counter() - start:.1f} s"
    )
    return row


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=4, help="num_speculative_tokens")
    parser.add_argument("--max-tokens", type=int, default=96)
    args = parser.parse_args()
    main(args.k, args.max_tokens)
