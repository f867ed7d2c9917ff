"""/v1/models, /tokenize and /detokenize against the model's own tokenizer, and /metrics parsed
with prometheus_client's parser."""

from __future__ import annotations

import asyncio
import contextlib

import httpx

from tests.entrypoints.server_utils import MAX_MODEL_LEN, SERVED_NAME, scrape, wait_idle


def test_models_lists_the_served_name(server):
    models = server.client().models.list().data
    assert [m.id for m in models] == [SERVED_NAME]
    assert models[0].object == "model" and models[0].owned_by == "vllm_mini"
    raw = httpx.get(f"{server.url}/v1/models").json()
    assert raw["object"] == "list" and raw["data"][0]["max_model_len"] == MAX_MODEL_LEN


def test_tokenize_detokenize_round_trip_matches_the_tokenizer(server, reference_llm):
    tok = reference_llm.get_tokenizer()
    text = "w5 w17 w300 w42"
    got = server.post("/tokenize", json={"model": SERVED_NAME, "prompt": text}).json()
    assert got["tokens"] == tok.encode(text)
    assert got["count"] == len(got["tokens"]) and got["max_model_len"] == MAX_MODEL_LEN
    back = server.post("/detokenize", json={"model": SERVED_NAME, "tokens": got["tokens"]}).json()
    assert back["prompt"] == tok.decode(got["tokens"]) == text


def test_tokenize_messages_applies_the_chat_template(server, reference_llm):
    messages = [{"role": "user", "content": "w5 w6"}]
    got = server.post("/tokenize", json={"messages": messages}).json()
    tok = reference_llm.get_tokenizer()
    rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert got["tokens"] == tok.encode(rendered, add_special_tokens=False)
    # The prompt tokens a chat completion reports are exactly these.
    resp = server.client().chat.completions.create(
        model=SERVED_NAME, messages=messages, max_tokens=1
    )
    assert resp.usage.prompt_tokens == got["count"]
    wait_idle(server.engine)


def test_metrics_count_tokens_requests_and_latencies(server):
    before = scrape(server.url)
    resp = server.client().completions.create(
        model=SERVED_NAME, prompt=[5, 6, 7], max_tokens=5, n=2, temperature=0.0,
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    assert resp.usage.completion_tokens == 10
    wait_idle(server.engine)
    after = scrape(server.url)
    label = f"model_name={SERVED_NAME}"

    def delta(name: str, extra: str = "") -> float:
        key = f"{name}{{{extra}{label}}}"
        return after[key] - before.get(key, 0.0)

    assert delta("vllm:prompt_tokens_total") == 3
    assert delta("vllm:generation_tokens_total") == 10
    assert delta("vllm:request_success_total", "finished_reason=length,") == 2
    for hist in ("time_to_first_token", "time_per_output_token", "e2e_request_latency"):
        assert delta(f"vllm:{hist}_seconds_count") == 1
        assert delta(f"vllm:{hist}_seconds_sum") > 0
    assert after[f"vllm:kv_cache_usage_perc{{{label}}}"] == 0.0
    assert after[f"vllm:num_requests_running{{{label}}}"] == 0.0
    assert after[f"vllm:num_requests_waiting{{{label}}}"] == 0.0
    assert 0.0 <= after[f"vllm:prefix_cache_hit_rate{{{label}}}"] <= 1.0


def test_non_streaming_request_is_aborted_when_its_client_disconnects(server):
    """A client that gives up must not leave its request generating (and holding KV blocks)."""
    before = scrape(server.url)

    async def give_up_while_running() -> None:
        body = {"prompt": [5, 6], "max_tokens": 250, "ignore_eos": True}
        async with httpx.AsyncClient(base_url=server.url) as client:
            task = asyncio.create_task(client.post("/v1/completions", json=body, timeout=60))
            while server.engine.get_stats()["num_running_reqs"] == 0:
                assert not task.done(), task.result().text
                await asyncio.sleep(0.005)
            task.cancel()  # closes the connection mid-request
            with contextlib.suppress(asyncio.CancelledError):
                await task

    asyncio.run(give_up_while_running())
    stats = wait_idle(server.engine)
    assert stats["kv_cache_usage"] == 0.0
    after = scrape(server.url)
    key = f"vllm:request_success_total{{finished_reason=abort,model_name={SERVED_NAME}}}"
    assert after[key] - before.get(key, 0.0) == 1
    generated = "vllm:generation_tokens_total{model_name=tiny}"
    assert after[generated] - before[generated] < 250
