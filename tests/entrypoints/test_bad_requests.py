"""Everything a client can get wrong: a 4xx in OpenAI's error shape naming the field, the server
keeps serving, and no request is left in the engine holding KV blocks."""

from __future__ import annotations

import json

import pytest

from tests.entrypoints.server_utils import MAX_MODEL_LEN, SERVED_NAME, wait_idle

COMPLETIONS, CHAT = "/v1/completions", "/v1/chat/completions"
USER = [{"role": "user", "content": "w5 w6"}]


def completion(**fields) -> dict:
    return {"model": SERVED_NAME, "prompt": "w5 w6 w7", "max_tokens": 4, **fields}


def chat(**fields) -> dict:
    return {"model": SERVED_NAME, "messages": USER, "max_tokens": 4, **fields}


# (id, path, JSON body or raw bytes, expected status, the field the error must name)
CASES = [
    ("prompt_too_long", COMPLETIONS, completion(prompt=[5] * MAX_MODEL_LEN), 400, "prompt"),
    ("prompt_too_long_stream", COMPLETIONS, completion(prompt=[5] * 300, stream=True), 400, "prompt"),
    ("chat_too_long", CHAT, chat(messages=[{"role": "user", "content": "w5 " * 300}]), 400, "messages"),
    ("max_tokens_zero", COMPLETIONS, completion(max_tokens=0), 400, "max_tokens"),
    ("max_completion_tokens_zero", CHAT, chat(max_completion_tokens=0), 400, "max_completion_tokens"),
    ("max_tokens_negative", CHAT, chat(max_tokens=-3), 400, "max_tokens"),
    ("past_max_model_len", COMPLETIONS, completion(max_tokens=MAX_MODEL_LEN - 2), 400, "max_tokens"),
    ("past_max_model_len_stream", CHAT, chat(max_tokens=10_000, stream=True), 400, "max_tokens"),
    ("temperature_negative", COMPLETIONS, completion(temperature=-0.5), 400, "temperature"),
    ("temperature_nan", COMPLETIONS, b'{"prompt": "w5", "temperature": NaN}', 400, "temperature"),
    ("top_p_zero", COMPLETIONS, completion(top_p=0.0), 400, "top_p"),
    ("top_p_above_one", CHAT, chat(top_p=1.5), 400, "top_p"),
    ("top_k_below_minus_one", COMPLETIONS, completion(top_k=-2), 400, "top_k"),
    ("n_zero", COMPLETIONS, completion(n=0), 400, "n"),
    ("n_above_limit", CHAT, chat(n=17), 400, "n"),
    ("logprobs_above_20", COMPLETIONS, completion(logprobs=21), 400, "logprobs"),
    ("top_logprobs_above_20", CHAT, chat(logprobs=True, top_logprobs=21), 400, "top_logprobs"),
    ("top_logprobs_without_logprobs", CHAT, chat(top_logprobs=2), 400, "logprobs"),
    ("malformed_json", COMPLETIONS, b'{"prompt": "w5", "max_tokens": ', 400, "JSON"),
    ("invalid_utf8", COMPLETIONS, b'{"prompt": "w5 \xff\xfe w6"}', 400, "UTF-8"),
    ("body_not_an_object", COMPLETIONS, b"[1, 2, 3]", 400, "JSON object"),
    ("max_tokens_wrong_type", COMPLETIONS, completion(max_tokens="ten"), 400, "max_tokens"),
    ("stop_wrong_type", COMPLETIONS, completion(stop=5), 400, "stop"),
    ("prompt_missing", COMPLETIONS, {"max_tokens": 4}, 400, "prompt"),
    ("prompt_empty", COMPLETIONS, completion(prompt=""), 400, "prompt"),
    ("prompt_mixed_list", COMPLETIONS, completion(prompt=["w5", [5, 6]]), 400, "prompt"),
    ("prompt_token_out_of_vocab", COMPLETIONS, completion(prompt=[5, 384]), 400, "prompt"),
    ("too_many_prompts", COMPLETIONS, completion(prompt=["w5"] * 65), 400, "prompt"),
    ("too_many_stop_strings", COMPLETIONS, completion(stop=[f"w{i}" for i in range(17)]), 400, "stop"),
    ("seed_out_of_range", COMPLETIONS, completion(seed=2**64), 400, "seed"),
    # Values that would crash the engine step itself (int64 overflow, indexing past the vocab).
    ("top_k_past_int64", COMPLETIONS, completion(top_k=2**70), 400, "top_k"),
    ("min_tokens_past_int64", CHAT, chat(min_tokens=2**70), 400, "min_tokens"),
    ("stop_token_out_of_vocab", COMPLETIONS, completion(stop_token_ids=[10**6], min_tokens=2), 400, "stop_token_ids"),
    ("stream_options_without_stream", COMPLETIONS, completion(stream_options={"include_usage": True}), 400, "stream_options"),
    ("empty_messages", CHAT, chat(messages=[]), 400, "messages"),
    ("unknown_role", CHAT, chat(messages=[{"role": "wizard", "content": "w5"}]), 400, "role"),
    ("image_part", CHAT, chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]), 400, "content"),
    ("unknown_model_completions", COMPLETIONS, completion(model="gpt-4"), 404, "model"),
    ("unknown_model_chat", CHAT, chat(model="gpt-4"), 404, "model"),
    ("detokenize_out_of_vocab", "/detokenize", {"tokens": [5, -1]}, 400, "tokens"),
    ("tokenize_nothing", "/tokenize", {"model": SERVED_NAME}, 400, "prompt"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("path", "body", "status", "field"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_request_gets_a_clear_error_and_leaves_nothing_behind(
    server, path, body, status, field
):
    if isinstance(body, bytes):
        resp = server.post(path, content=body, headers={"Content-Type": "application/json"})
    else:
        resp = server.post(path, json=body)
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == status
    assert error["type"] == ("NotFoundError" if status == 404 else "BadRequestError")
    assert field in error["message"], error
    stats = wait_idle(server.engine)
    assert stats["num_running_reqs"] == 0


@pytest.mark.parametrize(
    "fields", [{"top_k": 0}, {"top_k": -1}, {"top_k": 3}, {"n": 16}, {"logprobs": 20}]
)
def test_values_at_the_edge_of_the_limits_are_accepted(server, fields):
    resp = server.post(COMPLETIONS, json=completion(temperature=0.0, **fields))
    assert resp.status_code == 200, resp.text
    wait_idle(server.engine)


def test_unknown_fields_are_ignored_and_the_server_still_serves(server):
    resp = server.post(COMPLETIONS, json=completion(some_future_option=True))
    assert resp.status_code == 200, resp.text
    assert server.post("/v1/nonexistent", json={}).json()["error"]["type"] == "NotFoundError"
    assert json.loads(server.post(COMPLETIONS, json=completion()).text)["choices"]
    wait_idle(server.engine)
