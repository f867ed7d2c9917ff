"""/v1/completions through the official openai client, checked against the offline LLM."""

from __future__ import annotations

import math

import pytest

from tests.entrypoints.server_utils import SERVED_NAME, wait_idle
from vllm_mini import SamplingParams

PROMPT = "w5 w6 w7 w8"


def test_greedy_completion_equals_offline_llm_generate(server, reference_llm):
    resp = server.client().completions.create(
        model=SERVED_NAME, prompt=PROMPT, max_tokens=12, temperature=0.0
    )
    ref = reference_llm.generate(PROMPT, SamplingParams(temperature=0.0, max_tokens=12))[0]
    choice = resp.choices[0]
    assert choice.text == ref.outputs[0].text
    assert choice.finish_reason == ref.outputs[0].finish_reason
    assert resp.id.startswith("cmpl-") and resp.object == "text_completion"
    assert resp.model == SERVED_NAME and resp.created > 0
    n_prompt = len(reference_llm.get_tokenizer().encode(PROMPT))
    assert resp.usage.prompt_tokens == n_prompt
    assert resp.usage.completion_tokens == len(ref.outputs[0].token_ids)
    assert resp.usage.total_tokens == n_prompt + resp.usage.completion_tokens
    wait_idle(server.engine)


def test_streamed_deltas_concatenate_to_the_full_text_and_usage_comes_last(server):
    client = server.client()
    kwargs = dict(model=SERVED_NAME, prompt=PROMPT, max_tokens=16, temperature=0.0)
    full = client.completions.create(**kwargs)
    chunks = list(
        client.completions.create(**kwargs, stream=True, stream_options={"include_usage": True})
    )
    text_chunks, usage_chunk = chunks[:-1], chunks[-1]
    assert len(text_chunks) > 1  # it really streamed
    assert "".join(c.choices[0].text for c in text_chunks) == full.choices[0].text
    assert text_chunks[-1].choices[0].finish_reason == full.choices[0].finish_reason
    assert all(c.choices[0].finish_reason is None for c in text_chunks[:-1])
    assert usage_chunk.choices == [] and usage_chunk.usage == full.usage
    assert len({c.id for c in chunks}) == 1
    wait_idle(server.engine)


def test_stop_string_is_cut_in_stream_and_full_response_alike(server, reference_llm):
    """The stop string may be split across tokens: held-back text must never leak out."""
    client = server.client()
    base = reference_llm.generate(PROMPT, SamplingParams(temperature=0.0, max_tokens=12))[0]
    words = base.outputs[0].text.split(" ")
    stop = f"{words[3]} {words[4][:2]}"  # spans two tokens and ends inside the second one
    kwargs = dict(model=SERVED_NAME, prompt=PROMPT, max_tokens=12, temperature=0.0, stop=[stop])
    full = client.completions.create(**kwargs)
    streamed = "".join(c.choices[0].text for c in client.completions.create(**kwargs, stream=True))
    assert full.choices[0].text == " ".join(words[:3]) + " "
    assert streamed == full.choices[0].text
    assert full.choices[0].finish_reason == "stop"
    wait_idle(server.engine)


def test_seed_makes_sampling_reproducible(server):
    client = server.client()
    kwargs = dict(model=SERVED_NAME, prompt=PROMPT, max_tokens=16, temperature=1.0)
    a = client.completions.create(**kwargs, seed=1234).choices[0].text
    b = client.completions.create(**kwargs, seed=1234).choices[0].text
    others = {client.completions.create(**kwargs, seed=s).choices[0].text for s in range(4)}
    assert a == b
    assert len(others) > 1  # a different seed gives a different sample
    wait_idle(server.engine)


def test_n_and_list_of_prompts_number_choices_prompt_major(server, reference_llm):
    prompts = [[5, 6], [9, 10, 11], [40]]
    resp = server.client().completions.create(
        model=SERVED_NAME, prompt=prompts, n=2, max_tokens=6, temperature=0.0
    )
    assert [c.index for c in resp.choices] == list(range(6))
    refs = reference_llm.generate(
        [{"prompt_token_ids": p} for p in prompts], SamplingParams(temperature=0.0, max_tokens=6)
    )
    for c in resp.choices:
        assert c.text == refs[c.index // 2].outputs[0].text  # greedy: both samples agree
    assert resp.usage.prompt_tokens == 2 + 3 + 1
    assert resp.usage.completion_tokens == sum(len(r.outputs[0].token_ids) for r in refs) * 2
    wait_idle(server.engine)


def test_streamed_list_of_prompts_with_n_rebuilds_every_choice(server):
    client = server.client()
    kwargs = dict(model=SERVED_NAME, prompt=["w5 w6", "w7"], n=2, max_tokens=5, temperature=0.0)
    full = client.completions.create(**kwargs)
    texts = [""] * 4
    for chunk in client.completions.create(**kwargs, stream=True):
        for c in chunk.choices:
            texts[c.index] += c.text
    assert texts == [c.text for c in full.choices]
    wait_idle(server.engine)


def test_logprobs_match_the_offline_engine(server, reference_llm):
    resp = server.client().completions.create(
        model=SERVED_NAME, prompt=PROMPT, max_tokens=5, temperature=0.0, logprobs=3
    )
    ref = reference_llm.generate(PROMPT, SamplingParams(temperature=0.0, max_tokens=5, logprobs=3))[
        0
    ].outputs[0]
    lp = resp.choices[0].logprobs
    tok = reference_llm.get_tokenizer()
    assert lp.tokens == [tok.decode([t]) for t in ref.token_ids]
    for got, want, top, entry in zip(
        lp.token_logprobs, ref.token_ids, lp.top_logprobs, ref.logprobs
    ):
        assert got == pytest.approx(entry[want].logprob, abs=1e-4)
        assert len(top) == 3  # greedy: the sampled token is the best, so 3 entries in all
        assert max(top.values()) == pytest.approx(got, abs=1e-6)
    offsets = [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]
    assert lp.text_offset == offsets
    assert all(math.isfinite(x) for x in lp.token_logprobs)
    wait_idle(server.engine)


def test_echo_prepends_the_prompt(server):
    resp = server.client().completions.create(
        model=SERVED_NAME, prompt=[5, 6], max_tokens=3, temperature=0.0, echo=True
    )
    plain = server.client().completions.create(
        model=SERVED_NAME, prompt=[5, 6], max_tokens=3, temperature=0.0
    )
    assert resp.choices[0].text == "w5 w6" + plain.choices[0].text
    wait_idle(server.engine)


def test_vllm_extra_sampling_fields_reach_the_engine(server):
    resp = server.client().completions.create(
        model=SERVED_NAME,
        prompt=PROMPT,
        max_tokens=8,
        temperature=0.0,
        extra_body={"min_tokens": 8, "ignore_eos": True, "top_k": 5, "repetition_penalty": 1.3},
    )
    assert resp.usage.completion_tokens == 8 and resp.choices[0].finish_reason == "length"
    wait_idle(server.engine)


def test_logprobs_count_is_per_request_even_when_batched_together(server):
    """Two requests in flight at once, asking for 1 and 5 logprobs: each gets its own count."""
    from concurrent.futures import ThreadPoolExecutor

    client = server.client()

    def ask(k: int):
        return client.completions.create(
            model=SERVED_NAME, prompt=PROMPT, max_tokens=24, temperature=0.0, logprobs=k
        )

    with ThreadPoolExecutor(2) as pool:
        one, five = pool.map(ask, [1, 5])
    assert [len(t) for t in one.choices[0].logprobs.top_logprobs] == [1] * 24
    assert [len(t) for t in five.choices[0].logprobs.top_logprobs] == [5] * 24
    wait_idle(server.engine)
