"""Reference solution for lesson 00 (look after trying)."""

from __future__ import annotations

from vllm_mini.engine.llm_engine import LLMEngine
from vllm_mini.engine.processor import PromptType
from vllm_mini.sampling_params import SamplingParams


def generate_with_engine(
    engine: LLMEngine, prompts: list[PromptType], params: SamplingParams
) -> list[list[int]]:
    """Drive LLMEngine by hand: add every request, step until done, return token ids in order."""
    ids = [f"tour-{i}" for i in range(len(prompts))]
    for request_id, prompt in zip(ids, prompts):
        engine.add_request(request_id, prompt, params)
    finished: dict[str, list[int]] = {}
    while engine.has_unfinished_requests():
        # One step = schedule, one forward pass over every running request, sample, detokenize.
        for out in engine.step():
            if out.finished:
                finished[out.request_id] = list(out.outputs[0].token_ids)
    return [finished[i] for i in ids]
