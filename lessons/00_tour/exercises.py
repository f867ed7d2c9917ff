"""Lesson 00 exercise: do what LLM.generate does, by hand, with LLMEngine.

LESSON_IMPL=exercises .venv/bin/pytest lessons/00_tour
"""

from __future__ import annotations


def generate_with_engine(engine, prompts: list[dict], params) -> list[list[int]]:
    """Add each prompt as a request (engine.add_request(request_id, prompt, params)), call
    engine.step() until engine.has_unfinished_requests() is False, and return each request's
    generated token ids (out.outputs[0].token_ids of its finished RequestOutput) in input order.
    """
    raise NotImplementedError
