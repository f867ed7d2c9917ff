"""Lesson 13 demo: a JSON schema, a regex and a choice on SmolLM2, and what the masks cost.

Loads the default model (SmolLM2-135M-Instruct) and sends three chat requests, each with a
different constraint in `SamplingParams.structured_outputs`. It prints the outputs and checks
them (json.loads + jsonschema.validate, re.fullmatch, membership). Then it looks inside the
engine: how many of the 49152 tokens the first mask of each constraint allows, how long filling
and applying a mask take, and the decode step time of a batch of 4 with and without a constraint.

    .venv/bin/python lessons/13_structured_output/demo.py
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import jsonschema  # noqa: E402
import torch  # noqa: E402

from vllm_mini import LLM, SamplingParams  # noqa: E402
from vllm_mini.core.sched.output import GrammarOutput  # noqa: E402
from vllm_mini.sampling_params import StructuredOutputsParams  # noqa: E402
from vllm_mini.structured_output.utils import (  # noqa: E402
    apply_grammar_bitmask,
    get_structured_output_key,
    unpack_bitmask,
)

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "languages": {
            "type": "array",
            "items": {"type": "string", "maxLength": 20},
            "maxItems": 3,
        },
    },
    "required": ["name", "age", "languages"],
    "additionalProperties": False,
}
# A date whose month is 01-12 and whose day is 01-31: the mask enforces what a prompt can only ask.
DATE = r"(19|20)\d{2}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])"
SENTIMENTS = ["positive", "negative", "neutral"]
# Lower-case prose: 33214 of the 49152 tokens allowed at the start, for the timing.
BROAD = StructuredOutputsParams(regex=r"[a-z ,.]+")

REQUESTS = [
    ("json", "Ada Lovelace was a mathematician born in 1815. Describe her as JSON.",
     StructuredOutputsParams(json=PERSON)),
    ("regex", "On which date did the Apollo 11 astronauts land on the Moon?",
     StructuredOutputsParams(regex=DATE)),
    ("choice", "Classify the sentiment of this review: 'What a wonderful, moving film!'",
     StructuredOutputsParams(choice=SENTIMENTS)),
]  # fmt: skip


def check(kind: str, text: str) -> bool:
    """Does the output satisfy its constraint, judged by an independent library?"""
    if kind == "json":
        try:
            jsonschema.validate(json.loads(text), PERSON)
        except (json.JSONDecodeError, jsonschema.ValidationError):
            return False
        return True
    if kind == "regex":
        return re.fullmatch(DATE, text) is not None
    return text in SENTIMENTS


def first_mask(llm: LLM, params: StructuredOutputsParams) -> list[int]:
    """The tokens the engine's backend allows at the first position of a constraint."""
    manager = llm.llm_engine.engine_core.scheduler.structured_output_manager
    key = get_structured_output_key(params, manager.config.disable_any_whitespace)
    grammar = manager.backend.new_grammar(manager.backend.compile(key))
    bitmask = manager.backend.allocate_token_bitmask(1)
    grammar.fill_bitmask(bitmask, 0)
    return unpack_bitmask(bitmask, manager.backend.vocab_size)[0].nonzero().flatten().tolist()


def fill_and_apply_microseconds(llm: LLM, rows: int = 4, repeats: int = 200) -> tuple[float, float]:
    """(one mask fill, masking a [rows, 49152] logits batch) in microseconds, for BROAD."""
    manager = llm.llm_engine.engine_core.scheduler.structured_output_manager
    key = get_structured_output_key(BROAD, manager.config.disable_any_whitespace)
    grammar = manager.backend.new_grammar(manager.backend.compile(key))
    bitmask = manager.backend.allocate_token_bitmask(rows)
    start = time.perf_counter()
    for _ in range(repeats):
        grammar.fill_bitmask(bitmask, 0)
    fill = (time.perf_counter() - start) / repeats * 1e6
    bitmask[:] = bitmask[0]
    ids = [f"r{i}" for i in range(rows)]
    masks = GrammarOutput(ids, [1] * rows, bitmask.numpy())
    logits_rows = {req_id: (i, 1) for i, req_id in enumerate(ids)}
    logits = torch.randn(rows, manager.backend.vocab_size)
    start = time.perf_counter()
    for _ in range(repeats):
        apply_grammar_bitmask(logits, logits_rows, masks)  # what the runner calls before sampling
    return fill, (time.perf_counter() - start) / repeats * 1e6


def decode_step_ms(
    llm: LLM, constrained: bool, overlap: bool = True, batch: int = 4, tokens: int = 8
) -> float:
    """Fastest engine step in which all `batch` requests decode one token each (the minimum is
    the least disturbed by whatever else runs on the machine)."""
    # min_tokens = max_tokens: every request runs the same number of steps, masked or not.
    so = BROAD if constrained else None
    params = SamplingParams(
        temperature=0.0, max_tokens=tokens, min_tokens=tokens, structured_outputs=so
    )
    messages = [[{"role": "user", "content": f"Write a sentence about the number {i}."}]
                for i in range(batch)]  # fmt: skip
    core = llm.llm_engine.engine_core
    manager = core.scheduler.structured_output_manager
    # True (the default): masks are filled on a helper thread during the forward pass; False:
    # on the engine thread before it.
    manager.overlap_with_forward = overlap
    step, times = core.step, []

    def timed_step():
        start = time.perf_counter()
        outputs = step()
        counts = core.last_scheduler_output.num_scheduled_tokens
        if len(counts) == batch and all(n == 1 for n in counts.values()):  # a full decode step
            times.append(time.perf_counter() - start)
        return outputs

    core.step = timed_step  # an instance attribute shadows the method
    try:
        llm.chat(messages, params, use_tqdm=False)
    finally:
        del core.step
        manager.overlap_with_forward = True
    return min(times) * 1e3


def main(max_tokens: int = 128) -> dict:
    start = time.perf_counter()
    llm = LLM()
    tok = llm.get_tokenizer()
    messages = [[{"role": "user", "content": prompt}] for _, prompt, _ in REQUESTS]
    params = [SamplingParams(temperature=0.0, max_tokens=max_tokens, structured_outputs=so)
              for _, _, so in REQUESTS]  # fmt: skip
    outputs = llm.chat(messages, params, use_tqdm=False)

    row: dict = {"valid": {}}
    for (kind, prompt, _), out in zip(REQUESTS, outputs):
        text = out.outputs[0].text
        valid = check(kind, text)
        row["valid"][kind] = valid
        print(f"[{kind}] {prompt}\n  -> {text!r}  (valid: {valid})")

    print("\nthe first mask of each constraint (of 49152 tokens):")
    row["first_mask"] = {}
    for kind, _, so in REQUESTS:
        allowed = first_mask(llm, so)
        row["first_mask"][kind] = len(allowed)
        shown = [tok.decode([t]) for t in allowed[:8]]
        print(f"  {kind:6}: {len(allowed):5} allowed, e.g. {shown}")

    row["fill_us"], row["apply_us"] = fill_and_apply_microseconds(llm)
    row["step_ms_plain"] = decode_step_ms(llm, constrained=False)
    row["step_ms_masked"] = decode_step_ms(llm, constrained=True)
    row["step_ms_masked_serial"] = decode_step_ms(llm, constrained=True, overlap=False)
    print(
        f"\nregex {BROAD.regex!r}: one mask fill {row['fill_us']:.1f} us; masking the logits "
        f"of 4 requests {row['apply_us']:.1f} us"
    )
    print(
        f"fastest decode step, batch of 4: {row['step_ms_plain']:.1f} ms unconstrained, "
        f"{row['step_ms_masked']:.1f} ms with that regex on every request (masks filled beside "
        f"the forward pass), {row['step_ms_masked_serial']:.1f} ms (filled before it)"
    )
    stats = llm.llm_engine.engine_core.scheduler.structured_output_manager.stats
    print(
        f"grammars compiled: {stats.num_compiles}, cache hits: {stats.num_cache_hits}, "
        f"compile time {stats.compile_seconds * 1e3:.0f} ms in all; "
        f"whole demo {time.perf_counter() - start:.1f} s"
    )
    return row


if __name__ == "__main__":
    main()
