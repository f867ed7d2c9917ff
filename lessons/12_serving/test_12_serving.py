"""Lesson 12: your request-path functions must do what the real OpenAI server does.

One real server (build_app + uvicorn in a thread, on a tiny random Llama) is the peer: your SSE
framing must reproduce its bytes, your parser must read its streams as the openai client does,
your deltas must be its deltas, and your SamplingParams mapping must accept and reject what it
does. A second engine on the same checkpoint runs your streaming generator.

Runs `solutions.py` by default; `LESSON_IMPL=exercises` checks your `exercises.py`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from openai._streaming import SSEDecoder

from lessons._impl import load_impl
from tests.entrypoints.server_utils import SERVED_NAME, Server, serve, tiny_engine
from vllm_mini.engine.async_llm import AsyncLLM
from vllm_mini.entrypoints.openai.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponseStreamChoice,
    ChatCompletionStreamResponse,
    DeltaMessage,
    UsageInfo,
)
from vllm_mini.entrypoints.openai.serving_engine import SSE_DONE, sse_event
from vllm_mini.sampling_params import SamplingParams

impl = load_impl(__file__)
ref = load_impl(__file__, "solutions")

CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"
MESSAGES = [{"role": "user", "content": "w5 w6 w7"}]
PROMPT_IDS = [5, 6, 7, 8]


def chat_body(**fields: Any) -> dict[str, Any]:
    # ignore_eos: the random model may pick EOS early; every run then has its full length.
    base = {"model": SERVED_NAME, "messages": MESSAGES, "temperature": 0.0, "ignore_eos": True}
    return {**base, "max_tokens": 12, **fields}


@pytest.fixture(scope="module")
def server(tiny_llama_dir) -> Iterator[Server]:
    with serve(tiny_engine(tiny_llama_dir), served_model_name=SERVED_NAME) as s:
        yield s


@pytest.fixture(scope="module")
def engine(tiny_llama_dir) -> AsyncLLM:
    """A second engine on the same checkpoint: greedy, it generates what the server does."""
    return tiny_engine(tiny_llama_dir)


def openai_decode(stream: str) -> list[dict[str, Any]]:
    """The peer parser: the openai client's own SSE decoder."""
    chunks = []
    for event in SSEDecoder().iter_bytes(iter([stream.encode()])):
        if event.data == "[DONE]":
            break
        chunks.append(json.loads(event.data))
    return chunks


def cumulative_texts(engine: AsyncLLM, prompt_ids: list[int], params: SamplingParams) -> list[str]:
    """Choice 0's text after every engine step, as AsyncLLM yields it (cumulative)."""

    async def run() -> list[str]:
        stream = engine.generate({"prompt_token_ids": prompt_ids}, params, "cumulative")
        return [out.outputs[0].text async for out in stream]

    return asyncio.run(run())


def content_deltas(chunks: list[dict[str, Any]]) -> list[str]:
    """The content pieces of a chat stream (without the opening role chunk and usage chunk)."""
    return [
        c["choices"][0]["delta"]["content"]
        for c in chunks
        if c["choices"] and c["choices"][0]["delta"]["role"] is None
    ]


# ---- 1. SSE framing ---------------------------------------------------------------------------


def test_sse_frame_writes_the_bytes_the_server_writes(server):
    chunk = ChatCompletionStreamResponse(
        id="chatcmpl-1",
        model=SERVED_NAME,
        choices=[
            ChatCompletionResponseStreamChoice(
                index=0, delta=DeltaMessage(content='café, 日本, "quoted",\nnew line')
            )
        ],
        usage=UsageInfo(prompt_tokens=3, completion_tokens=1, total_tokens=4),
    )
    assert impl.sse_frame(chunk.model_dump()) == sse_event(chunk)
    assert impl.sse_frame("[DONE]") == SSE_DONE
    raw = server.post(CHAT, json=chat_body(stream=True)).text
    chunks = openai_decode(raw)
    assert len(chunks) > 3
    assert "".join(impl.sse_frame(c) for c in chunks) + impl.sse_frame("[DONE]") == raw


def test_parse_sse_reads_the_server_stream_like_the_openai_client(server):
    body = chat_body(stream=True, stream_options={"include_usage": True})
    raw = server.post(CHAT, json=body).text
    chunks = impl.parse_sse(raw)
    assert chunks == openai_decode(raw)
    # The stream says what the non-streamed response says, in pieces.
    full = server.post(CHAT, json=chat_body()).json()
    assert "".join(content_deltas(chunks)) == full["choices"][0]["message"]["content"]
    assert chunks[-2]["choices"][0]["finish_reason"] == full["choices"][0]["finish_reason"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == full["usage"]


@pytest.mark.parametrize(
    "stream",
    [
        ': keep-alive\n\ndata: {"a": 1}\n\n: ping\ndata: {"b": [2]}\n\ndata: [DONE]\n\n',
        'data: {"a": 1}\r\n\r\ndata:{"no_space": true}\r\n\r\ndata: [DONE]\r\n\r\n',
        'data: {"split":\ndata: "over two lines"}\n\ndata: [DONE]\n\ndata: {"after": 0}\n\n',
    ],
    ids=["comments", "crlf_and_no_space", "multiline_and_after_done"],
)
def test_parse_sse_follows_the_sse_rules_like_the_openai_client(stream):
    assert impl.parse_sse(stream) == openai_decode(stream)


def test_parse_sse_rejects_a_stream_cut_off_before_done():
    with pytest.raises(ValueError):
        impl.parse_sse('data: {"a": 1}\n\ndata: {"b": 2}\n\n')


# ---- 2. cumulative -> deltas ------------------------------------------------------------------


@pytest.mark.parametrize("with_stop", [False, True], ids=["no_stop", "stop_over_two_tokens"])
def test_cumulative_to_deltas_matches_the_server_stream(server, engine, with_stop):
    prompt_ids = server.post("/tokenize", json={"messages": MESSAGES}).json()["tokens"]
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    fields: dict[str, Any] = {}
    if with_stop:
        # A stop string made of two generated words, met mid-stream: the server holds back
        # len(stop) - 1 characters, and the engine cuts the stop string from the final text.
        words = cumulative_texts(engine, prompt_ids, params)[-1].split()
        assert len(words) >= 7, words
        stop = " ".join(words[5:7])
        params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True, stop=stop)
        fields["stop"] = stop
    texts = cumulative_texts(engine, prompt_ids, params)
    hold_back = len(fields["stop"]) - 1 if with_stop else 0
    served = content_deltas(
        ref.parse_sse(server.post(CHAT, json=chat_body(stream=True, **fields)).text)
    )
    assert impl.cumulative_to_deltas(texts, hold_back) == served
    assert "".join(served) == texts[-1]
    if with_stop:  # the hold-back matters: without it the server would have sent other pieces
        assert ref.cumulative_to_deltas(texts, 0) != served


def test_cumulative_to_deltas_small_cases():
    assert impl.cumulative_to_deltas(["a", "ab", "ab", "abc"]) == ["a", "b", "c"]
    assert impl.cumulative_to_deltas(["a", "a"]) == ["a", ""]  # the final chunk always goes
    assert impl.cumulative_to_deltas(["ab", "abcd", "abc"], hold_back=2) == ["ab", "c"]


# ---- 3. disconnect -> abort -------------------------------------------------------------------


def server_completion_deltas(server: Server, max_tokens: int) -> list[str]:
    body = {"prompt": PROMPT_IDS, "max_tokens": max_tokens, "temperature": 0.0, "stream": True}
    chunks = ref.parse_sse(server.post(COMPLETIONS, json={**body, "ignore_eos": True}).text)
    return [c["choices"][0]["text"] for c in chunks]


def run_stream(engine: AsyncLLM, max_tokens: int, leave_after: int | None) -> tuple[list[str], int]:
    """Consume stream_with_abort; the 'client' leaves once it has `leave_after` pieces. Return
    the pieces and how many requests the engine still held the moment the generator ended;
    then wait (at most 10 s, the engine loop still running) until the engine is idle."""
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    received: list[str] = []

    async def is_disconnected() -> bool:
        return leave_after is not None and len(received) >= leave_after

    async def run() -> int:
        prompt = {"prompt_token_ids": PROMPT_IDS}
        async for piece in impl.stream_with_abort(engine, prompt, params, "req", is_disconnected):
            received.append(piece)
        stats = engine.get_stats()
        held = stats["num_running_reqs"] + stats["num_waiting_reqs"]
        for _ in range(500):
            stats = engine.get_stats()
            if stats["num_running_reqs"] == stats["num_waiting_reqs"] == 0:
                break
            await asyncio.sleep(0.02)
        return int(held)

    held = asyncio.run(run())
    return received, held


def test_stream_with_abort_streams_what_the_server_streams(server, engine):
    received, _ = run_stream(engine, 10, leave_after=None)
    assert received == server_completion_deltas(server, 10)


def test_stream_with_abort_aborts_and_frees_kv_blocks_when_the_client_leaves(server, engine):
    max_tokens = 200
    before = engine.get_stats()["num_generation_tokens"]
    received, held = run_stream(engine, max_tokens, leave_after=3)
    assert received == server_completion_deltas(server, 3)
    # Aborted before the generator ended, not later by the garbage collector.
    assert held == 0, "the request was still in the engine when stream_with_abort returned"
    stats = engine.get_stats()
    assert stats["num_running_reqs"] == stats["num_waiting_reqs"] == 0
    assert stats["kv_cache_usage"] == 0.0, "the aborted request still holds KV blocks"
    assert not engine.engine.has_unfinished_requests()
    # Aborted, not merely abandoned: the engine stopped long before max_tokens.
    assert stats["num_generation_tokens"] - before < max_tokens // 2


# ---- 4. OpenAI body -> SamplingParams ---------------------------------------------------------

VALID_BODIES = [
    {},
    {"max_tokens": 7},
    {"max_completion_tokens": 5, "max_tokens": 9},
    {"temperature": 0, "seed": 3, "stop": "w9"},
    {"stop": ["w9", "w10 w11"], "n": 2, "top_p": 0.5, "logprobs": True, "top_logprobs": 3},
    {"logprobs": True},
    {"logprobs": False, "seed": None, "stop": None},
    {"top_k": 5, "min_p": 0.1, "repetition_penalty": 1.2, "ignore_eos": True, "min_tokens": 2},
    {"stop_token_ids": [7], "include_stop_str_in_output": True, "skip_special_tokens": False},
    {"presence_penalty": 0.5, "frequency_penalty": -0.5, "n": 16, "top_logprobs": 0},
    {"user": "bob", "stream": True, "some_future_field": 1, "top_k": -1},
]


@pytest.mark.parametrize("fields", VALID_BODIES)
def test_to_sampling_params_matches_the_server_request_model(fields):
    body = {"model": SERVED_NAME, "messages": MESSAGES, **fields}
    expected = ChatCompletionRequest.model_validate(body).to_sampling_params()
    assert impl.to_sampling_params(body) == expected


BAD_FIELDS = [
    {"max_tokens": 0},
    {"max_tokens": -3},
    {"max_completion_tokens": -1},
    {"max_completion_tokens": 0, "max_tokens": 5},
    {"temperature": -0.5},
    {"top_p": 0.0},
    {"top_p": 1.5},
    {"n": 0},
    {"n": 17},  # SamplingParams allows up to 128; this server does not
    {"presence_penalty": 3.0},
    {"top_k": -2},
    {"min_p": 2.0},
    {"logprobs": True, "top_logprobs": 21},
    {"top_logprobs": 2},  # without logprobs
    {"stop": 5},
    {"stop": [f"w{i}" for i in range(17)]},
]


@pytest.mark.parametrize(
    "fields", BAD_FIELDS, ids=lambda f: ",".join(f"{k}={v}" for k, v in f.items())[:32]
)
def test_to_sampling_params_rejects_what_the_server_rejects(server, fields):
    resp = server.post(CHAT, json=chat_body(**fields))
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    with pytest.raises(ValueError) as exc_info:
        impl.to_sampling_params({"messages": MESSAGES, **fields})
    field = str(exc_info.value).split(" ", 1)[0].rstrip(":")
    if error["param"] is not None:
        assert field == error["param"], (str(exc_info.value), error)
    else:  # the server named the field in its message only
        assert field in fields and field in error["message"], (str(exc_info.value), error)


# ----------------------------------------------------------------------------- the demo

demo = load_impl(__file__, "demo")


@pytest.mark.demo
def test_demo_streams_refuses_aborts_and_counts(tiny_llama_dir, capsys):
    found = demo.main(tiny=True, model=str(tiny_llama_dir))
    payloads = [line[len("data: ") :] for line in found["stream"] if line.startswith("data: ")]
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    content = [c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]
    assert content and content[-1]["choices"][0]["finish_reason"] in ("length", "stop")
    assert chunks[-1]["usage"]["completion_tokens"] == len(content) <= 24
    bad = found["bad_request"]
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "temperature"
    hang_up = found["hang_up"]
    assert hang_up["running_during"] == 1 and hang_up["kv_during"] > 0
    assert hang_up["running_after"] == 0 and hang_up["kv_after"] == 0  # aborted, blocks freed
    finished = {k: float(v) for k, v in found["metrics"].items() if "request_success_total" in k}
    assert sorted(finished.values()) == [1.0, 1.0]  # one finished by length/stop, one aborted
    assert any('finished_reason="abort"' in k for k in finished)
    assert "HTTP 400" in capsys.readouterr().out
