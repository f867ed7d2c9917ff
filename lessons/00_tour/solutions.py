"""Reference solution for lesson 00."""

from __future__ import annotations


def generate_with_engine(engine, prompts: list[dict], params) -> list[list[int]]:
    """Drive LLMEngine by hand: add every request, step until done, return token ids in order."""
    ids = [f"tour-{i}" for i in range(len(prompts))]
    for request_id, prompt in zip(ids, prompts):
        engine.add_request(request_id, prompt, params)
    finished = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                finished[out.request_id] = out.outputs[0].token_ids
    return [finished[i] for i in ids]
