"""/v1/chat/completions through the official openai client, checked against LLM.chat."""

from __future__ import annotations

import pytest

from tests.entrypoints.server_utils import SERVED_NAME, wait_idle
from vllm_mini import SamplingParams

MESSAGES = [
    {"role": "system", "content": "w10 w11"},
    {"role": "user", "content": "w5 w6 w7"},
]


def test_greedy_chat_equals_offline_llm_chat(server, reference_llm):
    resp = server.client().chat.completions.create(
        model=SERVED_NAME, messages=MESSAGES, max_completion_tokens=10, temperature=0.0
    )
    ref = reference_llm.chat(MESSAGES, SamplingParams(temperature=0.0, max_tokens=10))[0]
    choice = resp.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == ref.outputs[0].text
    assert choice.finish_reason == ref.outputs[0].finish_reason
    assert resp.id.startswith("chatcmpl-") and resp.object == "chat.completion"
    assert resp.usage.prompt_tokens == len(ref.prompt_token_ids)
    assert resp.usage.completion_tokens == len(ref.outputs[0].token_ids)
    wait_idle(server.engine)


def test_text_parts_are_joined_like_a_string_content(server):
    client = server.client()
    parts = [{"type": "text", "text": "w5"}, {"type": "text", "text": "w6 w7"}]
    as_parts = client.chat.completions.create(
        model=SERVED_NAME,
        messages=[{"role": "user", "content": parts}],
        max_tokens=6,
        temperature=0.0,
    )
    as_string = client.chat.completions.create(
        model=SERVED_NAME,
        messages=[{"role": "user", "content": "w5\nw6 w7"}],
        max_tokens=6,
        temperature=0.0,
    )
    assert as_parts.choices[0].message.content == as_string.choices[0].message.content
    wait_idle(server.engine)


def test_streamed_chat_opens_with_role_and_rebuilds_the_reply(server):
    client = server.client()
    kwargs = dict(model=SERVED_NAME, messages=MESSAGES, max_tokens=12, temperature=0.0)
    full = client.chat.completions.create(**kwargs)
    chunks = list(
        client.chat.completions.create(
            **kwargs, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks[:-1])
    assert text == full.choices[0].message.content
    assert chunks[-2].choices[0].finish_reason == full.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage == full.usage
    wait_idle(server.engine)


def test_top_logprobs_are_ranked_and_match_the_offline_engine(server, reference_llm):
    resp = server.client().chat.completions.create(
        model=SERVED_NAME,
        messages=MESSAGES,
        max_tokens=4,
        temperature=0.0,
        logprobs=True,
        top_logprobs=3,
    )
    ref = reference_llm.chat(MESSAGES, SamplingParams(temperature=0.0, max_tokens=4, logprobs=3))
    out = ref[0].outputs[0]
    content = resp.choices[0].logprobs.content
    assert len(content) == len(out.token_ids)
    for item, token_id, entry in zip(content, out.token_ids, out.logprobs):
        assert item.logprob == pytest.approx(entry[token_id].logprob, abs=1e-4)
        assert item.bytes == list(item.token.encode())
        values = [t.logprob for t in item.top_logprobs]
        assert len(values) == 3 and values == sorted(values, reverse=True)
        assert item.top_logprobs[0].token == item.token  # greedy picks the best
        want = sorted((lp for lp in entry.values() if lp.rank <= 3), key=lambda lp: lp.rank)
        assert [t.token for t in item.top_logprobs] == [lp.decoded_token for lp in want]
    wait_idle(server.engine)


def test_n_samples_with_seed_are_distinct_and_reproducible(server):
    client = server.client()
    kwargs = dict(model=SERVED_NAME, messages=MESSAGES, max_tokens=10, temperature=1.0, n=2, seed=7)
    first = client.chat.completions.create(**kwargs)
    second = client.chat.completions.create(**kwargs)
    texts = [c.message.content for c in first.choices]
    assert [c.index for c in first.choices] == [0, 1]
    assert texts == [c.message.content for c in second.choices]
    assert texts[0] != texts[1]  # each sample gets its own seed (seed + index)
    wait_idle(server.engine)


def test_without_max_tokens_the_reply_may_fill_the_context(server):
    resp = server.client().chat.completions.create(
        model=SERVED_NAME,
        messages=MESSAGES,
        temperature=0.0,
        extra_body={"ignore_eos": True},
    )
    prompt = resp.usage.prompt_tokens
    assert resp.usage.completion_tokens == 256 - prompt
    assert resp.choices[0].finish_reason == "length"
    wait_idle(server.engine)


# ---- chat_utils: the rendering LLM.chat and the server share -----------------------------------


def test_message_objects_and_dicts_with_text_parts_render_alike(tiny_llama_dir):
    from transformers import AutoTokenizer

    from vllm_mini.entrypoints.chat_utils import render_chat
    from vllm_mini.entrypoints.openai.protocol import ChatMessage

    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    parts = [{"type": "text", "text": "w5"}, {"type": "text", "text": "w6 w7"}]
    as_dicts = render_chat(tok, [{"role": "user", "content": parts}])
    as_objects = render_chat(tok, [ChatMessage(role="user", content="w5\nw6 w7")])
    assert as_dicts == as_objects
    assert as_dicts["prompt_token_ids"] == tok.encode(as_dicts["prompt"], add_special_tokens=False)


def test_llm_chat_reports_template_errors_like_the_server(reference_llm):
    template = "{{ raise_exception('roles must alternate') }}"
    pattern = "messages could not be rendered by the chat template: roles must alternate"
    with pytest.raises(ValueError, match=pattern):
        reference_llm.chat(MESSAGES, chat_template=template, use_tqdm=False)


def test_non_text_content_parts_are_refused_offline_too(reference_llm):
    image = {"type": "image_url", "image_url": {"url": "x"}}
    with pytest.raises(ValueError, match="content parts must be"):
        reference_llm.chat([{"role": "user", "content": [image]}], use_tqdm=False)
