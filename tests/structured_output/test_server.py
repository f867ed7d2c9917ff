"""Structured outputs and tool calls over HTTP, checked with the `openai` client on SmolLM2.

50 seeded JSON-schema requests at temperature 0.8 must all validate; regex and choice hold on
every sample; tool calls come back in the client's `tool_calls` for a named function, "required"
and "auto" (the Hermes parser); every bad constraint is a 400 that names the field.
"""

from __future__ import annotations

import asyncio
import json
import re
from concurrent.futures import ThreadPoolExecutor

import jsonschema
import openai
import pytest

from tests.entrypoints.server_utils import serve, wait_idle
from vllm_mini.engine.arg_utils import EngineArgs
from vllm_mini.engine.async_llm import AsyncLLM

SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 12},
        "population": {"type": "integer", "minimum": 0, "maximum": 100000000},
        "kind": {"enum": ["capital", "port", "village"]},
        "rivers": {"type": "array", "items": {"type": "string", "maxLength": 10}, "maxItems": 2},
        "location": {
            "type": "object",
            "properties": {
                "lat": {"type": "number", "minimum": -90, "maximum": 90},
                "lon": {"type": "number", "minimum": -180, "maximum": 180},
            },
            "required": ["lat", "lon"],
        },
    },
    "required": ["city", "population", "kind", "rivers", "location"],
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 12},
                "unit": {"enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"enum": ["UTC", "CET"]}},
            "required": ["zone"],
        },
    },
}
ASK = [{"role": "user", "content": "What is the weather like in Paris?"}]
MODEL = "smollm2"


@pytest.fixture(scope="module")
def server(smollm2_gguf):
    engine = AsyncLLM.from_engine_args(
        EngineArgs(
            model=str(smollm2_gguf),
            max_model_len=512,
            max_num_seqs=64,
            disable_log_stats=True,
            structured_outputs_config={"disable_any_whitespace": True},
            served_model_name=MODEL,
        )
    )
    with serve(engine, enable_auto_tool_choice=True, tool_call_parser="hermes") as srv:
        yield srv
    engine.shutdown()


def test_fifty_seeded_json_schema_requests_all_validate(server):
    client = server.client()

    def one(seed: int) -> str:
        r = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Describe a city as JSON."}],
            temperature=0.8,
            seed=seed,
            max_tokens=120,
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "city", "schema": SCHEMA},
            },
        )
        assert r.choices[0].finish_reason == "stop"
        return r.choices[0].message.content

    with ThreadPoolExecutor(50) as pool:  # all in flight at once: one batch of 50
        texts = list(pool.map(one, range(50)))
    for text in texts:
        jsonschema.validate(json.loads(text), SCHEMA)
    assert len(set(texts)) > 10  # sampled, not one answer fifty times
    wait_idle(server.engine)


def test_regex_and_choice_hold_on_every_sample(server):
    client = server.client()
    r = client.completions.create(
        model=MODEL,
        prompt="A product code:",
        n=8,
        temperature=1.0,
        seed=1,
        max_tokens=16,
        extra_body={"structured_outputs": {"regex": r"[A-Z]{2}-[0-9]{3,5}"}},
    )
    assert all(re.fullmatch(r"[A-Z]{2}-[0-9]{3,5}", c.text) for c in r.choices)
    r = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Is the sky green?"}],
        n=8,
        temperature=1.0,
        seed=2,
        max_tokens=8,
        extra_body={"structured_outputs": {"choice": ["yes", "no", "not sure"]}},
    )
    assert all(c.message.content in ("yes", "no", "not sure") for c in r.choices)
    r = client.chat.completions.create(
        model=MODEL, messages=ASK, max_tokens=8, response_format={"type": "json_object"}
    )
    assert r.choices[0].message.content.startswith("{")


def test_named_tool_choice_returns_arguments_that_fit_the_schema(server):
    r = server.client().chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=60,
    )
    choice = r.choices[0]
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather" and call.id
    jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])
    assert choice.finish_reason == "stop"  # vLLM's: named calls end with "stop"


@pytest.mark.parametrize("stream", [False, True])
def test_required_tool_choice_gives_tool_calls(server, stream):
    kwargs = dict(
        model=MODEL,
        messages=ASK,
        tools=[WEATHER, TIME],
        tool_choice="required",
        parallel_tool_calls=False,  # at most one call: the array's maxItems
        temperature=0,
        max_tokens=80,
    )
    client = server.client()
    if stream:
        calls, finish = {}, None
        for chunk in client.chat.completions.create(stream=True, **kwargs):
            for choice in chunk.choices:
                finish = choice.finish_reason or finish
                for delta in choice.delta.tool_calls or ():
                    calls[delta.index] = delta.function
        calls = list(calls.values())
    else:
        r = client.chat.completions.create(**kwargs)
        calls, finish = (
            [c.function for c in r.choices[0].message.tool_calls],
            r.choices[0].finish_reason,
        )
    assert len(calls) == 1 and finish == "tool_calls"
    tools = {"get_weather": WEATHER, "get_time": TIME}
    for call in calls:
        jsonschema.validate(json.loads(call.arguments), tools[call.name]["function"]["parameters"])


def test_auto_tool_choice_parses_hermes_calls_out_of_text(server):
    """The model is steered into Hermes' format with a regex, so the test does not depend on
    SmolLM2 having been trained on tools; the parser must find the call and keep the text."""
    r = server.client().chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=[WEATHER],
        tool_choice="auto",
        # The forced text is ~40 BPE tokens, but a grammar lets the model spell it in any split it
        # likes, and SmolLM2 greedily picks fragments ("C", "he", "c", "k", ...): 67 tokens.
        max_tokens=120,
        temperature=0,
        extra_body={
            "structured_outputs": {
                "regex": r'Checking\. <tool_call>\{"name": "get_weather", "arguments": '
                r'\{"city": "(Paris|Lyon)", "unit": "celsius"\}\}</tool_call>'
            }
        },
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Checking."
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments)["city"] in ("Paris", "Lyon")


@pytest.mark.parametrize(
    "body, field",
    [
        ({"structured_outputs": {"regex": "a(b"}}, "structured_outputs.regex"),
        ({"structured_outputs": {"json": {"type": "nonsense"}}}, "structured_outputs.json"),
        ({"structured_outputs": {"grammar": "root ::= "}}, "structured_outputs.grammar"),
        ({"structured_outputs": {"regex": "a", "choice": ["a"]}}, "exactly one of"),
        ({"structured_outputs": {"regexp": "a"}}, "unknown structured_outputs fields"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
            "response_format.json_schema.schema",
        ),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "no"}}},
            "tool_choice names function 'no'",
        ),
        ({"tool_choice": "required"}, "needs tools"),
    ],
)
def test_bad_constraints_are_400s_naming_the_field(server, body, field):
    with pytest.raises(openai.BadRequestError, match=re.escape(field)):
        server.client().chat.completions.create(
            model=MODEL, messages=ASK, max_tokens=4, extra_body=body
        )
    wait_idle(server.engine)


def test_auto_tool_choice_needs_the_server_flags(server):
    from vllm_mini.entrypoints.openai.protocol import ChatCompletionRequest
    from vllm_mini.entrypoints.openai.serving_chat import OpenAIServingChat
    from vllm_mini.entrypoints.openai.serving_models import OpenAIServingModels

    mc = server.engine.model_config
    models = OpenAIServingModels("m", mc.model, mc.max_model_len, server.engine)
    serving = OpenAIServingChat(server.engine, models)  # no --enable-auto-tool-choice
    request = ChatCompletionRequest(messages=ASK, tools=[WEATHER])  # tool_choice defaults to auto
    error = asyncio.run(serving.create_chat_completion(request))
    assert error.error.code == 400 and "--enable-auto-tool-choice" in error.error.message
