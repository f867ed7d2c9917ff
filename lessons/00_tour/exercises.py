"""Lesson 00 exercise: do what LLM.generate does, by hand, with LLMEngine.

LESSON_IMPL=exercises .venv/bin/pytest lessons/00_tour
"""

from __future__ import annotations

from vllm_mini.engine.llm_engine import LLMEngine
from vllm_mini.engine.processor import PromptType
from vllm_mini.sampling_params import SamplingParams


def generate_with_engine(
    engine: LLMEngine, prompts: list[PromptType], params: SamplingParams
) -> list[list[int]]:
    """Generate for every prompt and return each one's generated token ids, in input order.

    1. Give each prompt a unique request id and call engine.add_request(request_id, prompt, params).
    2. Call engine.step() until engine.has_unfinished_requests() is False. Each step returns the
       RequestOutputs that changed in that step; requests finish in any order.
    3. Keep out.outputs[0].token_ids of each RequestOutput whose out.finished is True.
    """
    raise NotImplementedError(
        "generate_with_engine: add every prompt, then step the engine until nothing is "
        "unfinished, keeping each finished request's token ids. LLM._run_engine is this loop "
        "(vllm_mini/entrypoints/llm.py; vLLM: vllm/entrypoints/llm.py, LLM._run_engine)"
    )
