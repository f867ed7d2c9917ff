"""Lesson 12 solutions: the pieces of the OpenAI server's request path, written small.

Stage 12. Each function re-does one job of vllm_mini/entrypoints/openai/ (which mirrors
vllm/entrypoints/openai/): SSE framing (serving_engine.sse_event), reading a stream back (what the
openai client does), cumulative -> delta text (serving_engine.StreamDeltas), aborting on a
disconnect (api_server.SSEResponse + AsyncLLM.generate), and mapping an OpenAI body onto
SamplingParams (protocol.ChatCompletionRequest.to_sampling_params). Look here only after trying
exercises.py. Next: the real files above, then vllm/entrypoints/openai/serving_chat.py.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing
from typing import Any

from vllm_mini.engine.async_llm import AsyncLLM
from vllm_mini.engine.processor import PromptType
from vllm_mini.sampling_params import SamplingParams

DONE = "[DONE]"  # OpenAI's end-of-stream sentinel: a `data:` payload that is not JSON
MAX_N = 16  # this server's limits (protocol.py), stricter than SamplingParams' own
MAX_LOGPROBS = 20
MAX_STOP = 16
# Chat-body fields that SamplingParams takes under the same name and with the same meaning.
SAME_NAME_FIELDS = (
    "n", "temperature", "top_p", "top_k", "min_p", "seed", "stop", "stop_token_ids",
    "presence_penalty", "frequency_penalty", "repetition_penalty", "ignore_eos", "min_tokens",
    "skip_special_tokens", "include_stop_str_in_output",
)  # fmt: skip


# ---- 1. server-sent events --------------------------------------------------------------------


def sse_frame(chunk: dict[str, Any] | str) -> str:
    """One SSE event: `data: <payload>` and a blank line. A dict becomes compact JSON."""
    if isinstance(chunk, str):
        payload = chunk
    else:
        # JSON never holds a raw newline (json escapes it inside strings), so one event is
        # always one `data:` line; ensure_ascii=False keeps UTF-8 as pydantic writes it.
        payload = json.dumps(chunk, ensure_ascii=False, separators=(",", ":"))
    return f"data: {payload}\n\n"


def parse_sse(stream: str) -> list[dict[str, Any]]:
    """The JSON payloads of a complete SSE stream, in order, up to `data: [DONE]`."""
    chunks: list[dict[str, Any]] = []
    # An event ends at a blank line; lines starting with ':' are comments (keep-alives).
    for event in stream.replace("\r\n", "\n").split("\n\n"):
        data = [
            line[5:].removeprefix(" ") for line in event.split("\n") if line.startswith("data:")
        ]
        if not data:
            continue
        payload = "\n".join(data)  # the SSE spec joins an event's data lines with newlines
        if payload == DONE:
            return chunks
        chunks.append(json.loads(payload))
    raise ValueError("the stream ended without `data: [DONE]`: it was cut off")


# ---- 2. cumulative outputs -> deltas ----------------------------------------------------------


def cumulative_to_deltas(texts: list[str], hold_back: int = 0) -> list[str]:
    """The piece of text each stream chunk carries, given each step's cumulative text."""
    deltas: list[str] = []
    sent = 0
    for i, text in enumerate(texts):
        final = i == len(texts) - 1
        # Until the end, keep the last `hold_back` characters: they may be the start of a stop
        # string the engine will cut, and a sent character cannot be taken back.
        end = len(text) if final else max(sent, len(text) - hold_back)
        piece = text[sent:end]
        if piece or final:  # the final chunk always goes out: it carries finish_reason
            deltas.append(piece)
        sent = end
    return deltas


# ---- 3. disconnect -> abort -------------------------------------------------------------------


async def stream_with_abort(
    engine: AsyncLLM,
    prompt: PromptType,
    params: SamplingParams,
    request_id: str,
    is_disconnected: Callable[[], Awaitable[bool]],
) -> AsyncGenerator[str, None]:
    """Yield the new text of each step; abort the request as soon as the client is gone."""
    sent = 0
    # aclosing: however we leave, engine.generate() is closed now, not whenever the GC runs.
    async with aclosing(engine.generate(prompt, params, request_id)) as outputs:
        async for out in outputs:
            if await is_disconnected():
                # Frees the request's KV blocks at the next step boundary. Closing generate()
                # (aclosing, on return) would abort it too: that is what the server relies on.
                await engine.abort(request_id)
                return
            completion = out.outputs[0]
            piece = completion.text[sent:]
            sent = len(completion.text)
            if piece or completion.finished():
                yield piece


# ---- 4. OpenAI body -> SamplingParams ---------------------------------------------------------


def to_sampling_params(body: dict[str, Any]) -> SamplingParams:
    """Map a /v1/chat/completions body onto SamplingParams; ValueError names the bad field."""
    n = body.get("n", 1)
    if isinstance(n, int) and n > MAX_N:
        raise ValueError(f"n must be at most {MAX_N} on this server, got {n}")
    stop = body.get("stop")
    if stop is not None:
        if isinstance(stop, str):
            stop = [stop]
        # Checked here: list(5) inside SamplingParams would be a TypeError, i.e. a 500.
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise ValueError(f"stop must be a string or a list of strings, got {stop!r}")
        if len(stop) > MAX_STOP:
            raise ValueError(f"stop: at most {MAX_STOP} stop strings per request, got {len(stop)}")

    top_logprobs = body.get("top_logprobs")
    if top_logprobs is not None and not 0 <= top_logprobs <= MAX_LOGPROBS:
        raise ValueError(f"top_logprobs must be in [0, {MAX_LOGPROBS}], got {top_logprobs}")
    if top_logprobs and not body.get("logprobs"):
        raise ValueError("top_logprobs can only be set when logprobs is true")
    # Chat's `logprobs` is a switch; the engine wants a count (0: just the sampled token).
    logprobs = (top_logprobs or 0) if body.get("logprobs") else None

    # max_completion_tokens is OpenAI's new name for max_tokens; None lets the engine fill in
    # the room left in max_model_len once the prompt is known. Checked here under its own name:
    # an explicit 0 must be an error, not a silent fall-back to max_tokens.
    max_tokens = body.get("max_tokens")
    if body.get("max_completion_tokens") is not None:
        max_tokens = body["max_completion_tokens"]
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise ValueError(f"max_completion_tokens must be at least 1, got {max_tokens!r}")
    same_name = {name: body[name] for name in SAME_NAME_FIELDS if name in body}
    # SamplingParams checks every range and starts each message with the field's name.
    return SamplingParams(max_tokens=max_tokens, logprobs=logprobs, **same_name)
