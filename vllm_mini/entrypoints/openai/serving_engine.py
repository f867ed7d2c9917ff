"""OpenAIServing: what every endpoint shares — errors, request ids, prompts, and the fan-out.

Stage 12. Mirrors vllm/entrypoints/serve/engine/serving.py (with
vllm/entrypoints/generate/base/serving.py). The serving layer turns an HTTP
request into engine requests and back. It does, before anything is queued: tokenize (or render the
chat template), check the prompt against max_model_len, and let the engine's Processor validate the
rest — so every client mistake becomes a 400 *before* a stream has started, and a rejected request
never holds a KV block. Then `generate` runs one AsyncLLM stream per prompt and merges them into
one iterator; when its consumer goes away (client disconnect, error, cancellation) every stream
still running is cancelled, which aborts its request in the engine. Next: serving_completion.py.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncGenerator
from http import HTTPStatus
from typing import Any, TypedDict

from pydantic import BaseModel

from vllm_mini.engine.async_llm import AsyncLLM
from vllm_mini.engine.processor import check_context_length
from vllm_mini.entrypoints import chat_utils
from vllm_mini.entrypoints.openai.metrics import ServerMetrics
from vllm_mini.entrypoints.openai.protocol import ChatMessage, ErrorInfo, ErrorResponse
from vllm_mini.entrypoints.openai.serving_models import OpenAIServingModels
from vllm_mini.logger import init_logger
from vllm_mini.lora.request import LoRARequest
from vllm_mini.outputs import CompletionOutput, RequestOutput
from vllm_mini.sampling_params import SamplingParams

logger = init_logger(__name__)

SSE_DONE = "data: [DONE]\n\n"  # the last event of every stream, as OpenAI sends it
_STREAM_DONE = object()  # a producer's end-of-stream marker in the merge queue


def _prompt_id(request_id: str, index: int) -> str:
    """The engine request id of prompt `index` of one API request (each prompt is its own)."""
    return f"{request_id}-{index}"


class EnginePrompt(TypedDict):
    """One prompt as the engine takes it: the ids, and the text when we have it."""

    prompt: str | None
    prompt_token_ids: list[int]


def sse_event(payload: BaseModel) -> str:
    """Server-sent events framing: one `data:` line, then a blank line."""
    return f"data: {payload.model_dump_json()}\n\n"


def create_error_response(
    message: str,
    err_type: str = "BadRequestError",
    status_code: HTTPStatus = HTTPStatus.BAD_REQUEST,
    param: str | None = None,
) -> ErrorResponse:
    return ErrorResponse(
        error=ErrorInfo(message=message, type=err_type, param=param, code=int(status_code))
    )


def internal_error(e: BaseException) -> ErrorResponse:
    return create_error_response(
        f"internal server error: {e!r}", "InternalServerError", HTTPStatus.INTERNAL_SERVER_ERROR
    )


def sse_error(error: ErrorResponse) -> str:
    """An error after a stream has started: the status is already 200, so it goes in-band."""
    return sse_event(error)


class StreamDeltas:
    """Turns cumulative CompletionOutputs into the new piece of each choice, for streaming.

    A stop string may arrive split over several steps; when it completes, the engine cuts it
    (and anything after it) from the text. Text already sent cannot be taken back, so, as vLLM's
    detokenizer does, the last len(longest stop) - 1 characters are held back until the choice
    finishes: whatever the cut removes was never sent.
    """

    def __init__(self, num_choices: int, params: SamplingParams) -> None:
        cut_later = params.stop and not params.include_stop_str_in_output
        self.hold_back = max(len(s) for s in params.stop) - 1 if cut_later else 0
        self.sent_chars = [0] * num_choices
        self.sent_tokens = [0] * num_choices
        self.finished = [False] * num_choices

    def next(self, choice: int, out: CompletionOutput) -> tuple[str, range] | None:
        """(new text, positions of the new tokens), or None when there is nothing to send."""
        if self.finished[choice]:
            return None
        done = out.finished()
        end = (
            len(out.text) if done else max(self.sent_chars[choice], len(out.text) - self.hold_back)
        )
        text = out.text[self.sent_chars[choice] : end]
        if not text and not done:
            return None  # e.g. half of a UTF-8 character: its tokens go with the next piece
        tokens = range(self.sent_tokens[choice], len(out.token_ids))
        self.sent_chars[choice], self.sent_tokens[choice] = end, len(out.token_ids)
        self.finished[choice] = done
        return text, tokens


class OpenAIServing:
    request_id_prefix = "cmpl"

    def __init__(
        self, engine: AsyncLLM, models: OpenAIServingModels, metrics: ServerMetrics | None = None
    ) -> None:
        self.engine = engine
        self.models = models
        self.metrics = metrics
        self.tokenizer = engine.tokenizer
        self.max_model_len = engine.model_config.max_model_len
        # Cancelled streams finish their abort in the background; hold them until they do.
        self._background: set[asyncio.Task] = set()

    # ---- errors and ids ----------------------------------------------------------------------

    @staticmethod
    def bad_request(error: ValueError, request: BaseModel | None = None) -> ErrorResponse:
        """A 400 from a ValueError. SamplingParams and the Processor start their messages with
        the field's name ("top_p must be in (0, 1], got 1.5"): that name becomes `param`."""
        message = str(error)
        first_word = message.split(" ", 1)[0]
        fields = type(request).model_fields if request is not None else {}
        param = first_word if first_word in fields else None
        return create_error_response(message, param=param)

    def request_id(self) -> str:
        return f"{self.request_id_prefix}-{uuid.uuid4().hex}"

    @staticmethod
    def log_ignored_fields(request: BaseModel) -> None:
        if request.model_extra:
            logger.warning("ignored unsupported request fields: %s", sorted(request.model_extra))

    # ---- prompts -----------------------------------------------------------------------------

    def tokenize_prompt(self, prompt: str | list[int]) -> EnginePrompt:
        if isinstance(prompt, str):
            ids = chat_utils.encode_prompt(self.tokenizer, prompt)
            return EnginePrompt(prompt=prompt, prompt_token_ids=ids)
        return EnginePrompt(prompt=None, prompt_token_ids=list(prompt))

    def render_chat(
        self,
        messages: list[ChatMessage],
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
    ) -> EnginePrompt:
        """Apply the tokenizer's chat template, exactly as LLM.chat does (chat_utils.py)."""
        processor = self.engine.engine.processor
        placeholder = processor.image_placeholder  # stage 10: image parts for multimodal models
        media = None
        if placeholder is not None:
            media = chat_utils.ChatMedia(
                placeholder, processor.model_config.allowed_local_media_path
            )
        rendered = chat_utils.render_chat(
            self.tokenizer,
            messages,
            add_generation_prompt=add_generation_prompt,
            tools=tools,
            media=media,
        )
        return EnginePrompt(**rendered)

    def validate_prompt(
        self, prompt: EnginePrompt, params: SamplingParams, input_name: str = "prompt"
    ) -> None:
        """The OpenAI API's length policy (stricter than offline: the input must leave room to
        generate, and an explicit max_tokens must fit). Everything else is validated once, by
        the engine's Processor, when the request is added."""
        num_prompt = len(prompt["prompt_token_ids"])
        keep = params.truncate_prompt_tokens
        if keep is not None:  # the engine keeps only the prompt's end: judge that length
            num_prompt = min(num_prompt, self.max_model_len if keep == -1 else keep)
        check_context_length(
            num_prompt,
            params.max_tokens,
            self.max_model_len,
            input_name=input_name,
            strict=True,
        )

    # ---- running requests --------------------------------------------------------------------

    async def add_requests(
        self,
        prompts: list[EnginePrompt],
        params: list[SamplingParams],
        request_id: str,
        lora_request: LoRARequest | None = None,
    ) -> list[asyncio.Queue]:
        """Add every prompt as its own engine request, all or nothing: a ValueError (bad input
        the engine's Processor found) leaves nothing queued and becomes a 400 before any byte of
        the response is sent. `lora_request`: the adapter the request's `model` named."""
        await self.engine.check_health()
        queues: list[asyncio.Queue] = []
        try:
            for i, (prompt, p) in enumerate(zip(prompts, params)):
                rid = _prompt_id(request_id, i)
                queues.append(
                    await self.engine.add_request(rid, prompt, p, lora_request=lora_request)
                )
        except ValueError:
            self.engine.abort_nowait([_prompt_id(request_id, i) for i in range(len(queues))])
            raise
        return queues

    async def generate(
        self,
        prompts: list[EnginePrompt],
        params: list[SamplingParams],
        request_id: str,
        queues: list[asyncio.Queue],
    ) -> AsyncGenerator[tuple[int, RequestOutput], None]:
        """Stream the requests `add_requests` queued; yield (prompt index, cumulative output) in
        arrival order. Mirrors vLLM's merge_async_iterators."""
        queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()

        async def produce(i: int) -> None:
            try:
                stream = self.engine.iterate_outputs(_prompt_id(request_id, i), queues[i])
                async for out in stream:
                    queue.put_nowait((i, out))
            except Exception as e:  # noqa: BLE001 - handed to the consumer, who raises it
                queue.put_nowait((i, e))
            queue.put_nowait((i, _STREAM_DONE))

        tasks = [asyncio.create_task(produce(i)) for i in range(len(prompts))]
        finished: set[int] = set()
        try:
            remaining = len(tasks)
            while remaining:
                i, item = await queue.get()
                if item is _STREAM_DONE:
                    remaining -= 1
                    continue
                if isinstance(item, Exception):
                    raise item
                if item.finished:
                    finished.add(i)
                    if self.metrics is not None:
                        self.metrics.observe_finished(item)
                yield i, item
        finally:
            # Synchronous on purpose: this may run inside a cancelled scope, where an await
            # would be interrupted. A cancelled producer closes its AsyncLLM stream, whose
            # `finally` aborts the request and frees its KV blocks at the next step boundary.
            for task in tasks:
                if not task.done():
                    task.cancel()
                    self._background.add(task)
                    task.add_done_callback(self._background.discard)
            unfinished = len(tasks) - len(finished)
            if unfinished and self.metrics is not None:
                self.metrics.observe_aborted(unfinished * params[0].n)
            if unfinished:
                logger.info("aborted %d unfinished prompt(s) of %s", unfinished, request_id)
