"""Lesson 12 exercises: the jobs the OpenAI server does between HTTP and the engine.

Fill in each function, then run:  LESSON_IMPL=exercises .venv/bin/pytest lessons/12_serving
The tests start the REAL server (vllm_mini/entrypoints/openai/api_server.py) on a tiny model and
compare your functions with what it sends: its SSE bytes, its stream of deltas, its 400s. Run one
exercise's tests with -k: `-k sse`, `-k deltas`, `-k abort`, `-k sampling_params`.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

from vllm_mini.engine.async_llm import AsyncLLM
from vllm_mini.engine.processor import PromptType
from vllm_mini.sampling_params import SamplingParams

# ---- 1. server-sent events --------------------------------------------------------------------


def sse_frame(chunk: dict[str, Any] | str) -> str:
    """Frame one server-sent event as the server writes it: "data: " + payload + "\\n\\n".

    A str is sent as it is (the stream ends with sse_frame("[DONE]")). A dict is sent as
    compact JSON, byte for byte what pydantic's model_dump_json writes: no space after ',' or
    ':', and non-ASCII characters written as themselves, not as \\u escapes.
    """
    raise NotImplementedError(
        "sse_frame: 'data: ' + the payload (compact JSON for a dict) + a blank line. sse_event "
        "does it (vllm_mini/entrypoints/openai/serving_engine.py; vLLM: "
        "vllm/entrypoints/openai/chat_completion/serving.py, where each chunk is framed)"
    )


def parse_sse(stream: str) -> list[dict[str, Any]]:
    """Read a whole SSE stream back: return the JSON payloads in order, up to `data: [DONE]`.

    Events are separated by a blank line ("\\n\\n"; accept "\\r\\n" line ends too). In an event,
    only lines starting with "data:" matter (drop one space after the colon); lines starting
    with ":" are comments. An event with several data lines has them joined by "\\n". Stop at
    the [DONE] payload; if the stream ends without it, raise ValueError (it was cut off).
    """
    raise NotImplementedError(
        "parse_sse: split events on blank lines, join their data lines, stop at [DONE]; the openai"
        " client's SSEDecoder reads streams the same way (openai/_streaming.py)"
    )


# ---- 2. cumulative outputs -> deltas ----------------------------------------------------------


def cumulative_to_deltas(texts: list[str], hold_back: int = 0) -> list[str]:
    """AsyncLLM yields each step's CUMULATIVE text; a stream sends only what is new.

    `texts` holds one request's text after each engine step; the last one is the finished
    output. Return the text of each stream chunk, in order:
    - every step sends text[sent:end] where `sent` counts the characters already sent;
    - end = len(text) for the last step; before that, end = len(text) - hold_back, but never
      less than `sent` (held-back characters may be the start of a stop string that the engine
      will cut; what was sent cannot be taken back);
    - an empty piece is not sent, except for the last step (it carries the finish reason).
    cumulative_to_deltas(["a", "ab", "ab", "abc"]) == ["a", "b", "c"]
    """
    raise NotImplementedError(
        "cumulative_to_deltas: send only the characters not sent yet, holding back the last "
        "hold_back until the end. StreamDeltas does it (vllm_mini/entrypoints/openai/"
        "serving_engine.py; vLLM holds back in its detokenizer, vllm/v1/engine/detokenizer.py)"
    )


# ---- 3. disconnect -> abort -------------------------------------------------------------------


async def stream_with_abort(
    engine: AsyncLLM,
    prompt: PromptType,
    params: SamplingParams,
    request_id: str,
    is_disconnected: Callable[[], Awaitable[bool]],
) -> AsyncGenerator[str, None]:
    """Stream one request's text as deltas (choice 0), until it finishes or the client leaves.

    Iterate engine.generate(prompt, params, request_id) (cumulative RequestOutputs). For each
    output, first `await is_disconnected()` (like starlette's Request.is_disconnected): if it is
    True, abort the request in the engine (so its KV blocks are freed) and stop without
    yielding. Otherwise yield the new text, skipping empty pieces except the finished one.
    When your generator ends, the request must already be out of the engine: close
    engine.generate() yourself (contextlib.aclosing) rather than leave it to the garbage
    collector.
    """
    raise NotImplementedError(
        "stream_with_abort: iterate engine.generate, check the client before each output, abort "
        "and stop if it left. The server's streams do it (vllm_mini/entrypoints/openai/"
        "serving_engine.py, AsyncLLM.abort in vllm_mini/engine/async_llm.py; vLLM: "
        "vllm/v1/engine/async_llm.py)"
    )
    yield ""  # unreachable; makes this an async generator, as your version will be


# ---- 4. OpenAI body -> SamplingParams ---------------------------------------------------------


def to_sampling_params(body: dict[str, Any]) -> SamplingParams:
    """Map a /v1/chat/completions JSON body onto SamplingParams, as protocol.py does.

    - max_tokens: body["max_completion_tokens"] if present (it must be an int >= 1, else a
      ValueError naming max_completion_tokens), else body["max_tokens"] (None if neither: the
      engine fills in the room left in max_model_len);
    - logprobs: chat's `logprobs` is a bool; if true, SamplingParams.logprobs = top_logprobs
      (0 if absent), else None. top_logprobs must be in [0, 20] and needs logprobs true;
    - n, temperature, top_p, top_k, min_p, seed, stop, stop_token_ids, presence_penalty,
      frequency_penalty, repetition_penalty, ignore_eos, min_tokens, skip_special_tokens,
      include_stop_str_in_output: same name, passed on only if present in the body;
    - every other key (model, messages, stream, user, unknown ones) is ignored.
    The server is stricter than SamplingParams: n <= 16, at most 16 stop strings, and `stop`
    must be a string or a list of strings. Raise ValueError for a bad value, with a message
    whose FIRST word is the field's name ("n must be ..."): the server turns that word into the
    error's `param`. SamplingParams' own messages already start that way.
    """
    raise NotImplementedError(
        "to_sampling_params: map the request body's fields onto SamplingParams, refusing bad "
        "values with the field's name first. ChatCompletionRequest.to_sampling_params does it "
        "(vllm_mini/entrypoints/openai/protocol.py; vLLM: "
        "vllm/entrypoints/openai/chat_completion/protocol.py)"
    )
