"""The OpenAI wire format: pydantic models for every request and response body.

Stage 12. Mirrors vllm/entrypoints/openai/chat_completion/protocol.py and
vllm/entrypoints/openai/completion/protocol.py. Requests are validated here, field by field,
before anything reaches the engine: types, and the server's own limits (n <= 16, logprobs <= 20,
at most 16 stop strings, at most 64 prompts), so a bad request fails with a message naming the
field. Value ranges that SamplingParams already checks (temperature >= 0, top_p in (0, 1], ...)
are left to it: one rule, one place. Unknown fields are accepted and ignored, as OpenAI and vLLM
do, so clients that send newer fields keep working. Next: serving_engine.py.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from vllm_mini.entrypoints.openai.base_protocol import (
    ChatCompletionNamedToolChoiceParam,
    ChatCompletionToolsParam,
    DeltaToolCall,
    OpenAIBaseModel,
    ResponseFormat,
    ToolCall,
)
from vllm_mini.sampling_params import SamplingParams, StructuredOutputsParams
from vllm_mini.tool_parsers.utils import get_json_schema_from_tools

MAX_N = 16  # samples per prompt; SamplingParams allows more, a public server should not
MAX_LOGPROBS = 20  # OpenAI's limit for logprobs / top_logprobs
MAX_STOP = 16  # stop strings per request
MAX_PROMPTS = 64  # prompts in one completions request
CHAT_ROLES = ("system", "developer", "user", "assistant", "tool")
# Every integer ends up in an int64 tensor: a bigger one would crash the engine step, not just
# this request, so it is refused here (ranges within int64 are SamplingParams' business).
Int64 = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: int


class ErrorResponse(BaseModel):
    """OpenAI's error body: {"error": {"message", "type", "param", "code"}}."""

    error: ErrorInfo


class StreamOptions(OpenAIBaseModel):
    include_usage: bool = False
    continuous_usage_stats: bool = False  # vLLM extra: usage in every chunk


class UsageInfo(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class SamplingRequest(OpenAIBaseModel):
    """Fields shared by completions and chat, with vLLM's extra sampling parameters."""

    model: str | None = None
    n: int = Field(1, ge=1, le=MAX_N)
    temperature: float = 1.0
    top_p: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: Int64 | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    top_k: Int64 = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    ignore_eos: bool = False
    min_tokens: Int64 = 0
    stop_token_ids: list[Int64] | None = Field(None, max_length=MAX_STOP)
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    # OpenAI's logit_bias (token id as a string key -> bias in [-100, 100]) and vLLM's extras.
    logit_bias: dict[str, float] | None = None
    allowed_token_ids: list[Int64] | None = None
    bad_words: list[str] | None = None
    # vLLM's: only requests with the same salt share prefix-cache blocks.
    cache_salt: str | None = None
    # vLLM's: keep only the prompt's last k tokens (-1: the model's context length).
    truncate_prompt_tokens: Int64 | None = None
    # Stage 13: OpenAI's response_format, or vLLM's extra `structured_outputs` (a dict of
    # StructuredOutputsParams fields: json, regex, choice, grammar, json_object, ...).
    response_format: ResponseFormat | None = None
    structured_outputs: dict[str, Any] | None = None

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, stop: str | list[str] | None) -> str | list[str] | None:
        if isinstance(stop, list) and len(stop) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop strings per request, got {len(stop)}")
        return stop

    @model_validator(mode="after")
    def _stream_options_need_stream(self) -> SamplingRequest:
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options can only be set when stream is true")
        return self

    def _sampling_params(self, max_tokens: int | None, logprobs: int | None) -> SamplingParams:
        """Raises ValueError naming the field for values out of range (SamplingParams checks)."""
        same_name = {name: getattr(self, name) for name in _SAMPLING_FIELDS}
        return SamplingParams(
            max_tokens=max_tokens,
            logprobs=logprobs,
            structured_outputs=self._structured_outputs(),
            **same_name,
        )

    def _structured_outputs(self) -> StructuredOutputsParams | dict[str, Any] | None:
        fmt = self.response_format
        if fmt is not None and fmt.type != "text":
            if self.structured_outputs is not None:
                raise ValueError("set either response_format or structured_outputs, not both")
            if fmt.type == "json_object":
                return StructuredOutputsParams(json_object=True)
            if fmt.json_schema is None or fmt.json_schema.json_schema is None:
                raise ValueError(
                    'response_format.json_schema.schema is required when type is "json_schema"'
                )
            return StructuredOutputsParams(json=fmt.json_schema.json_schema)
        return self.structured_outputs  # a dict: SamplingParams reads and checks it


# Request fields that SamplingParams takes as they are (same name, same meaning).
_SAMPLING_FIELDS = (
    "n", "temperature", "top_p", "top_k", "min_p", "seed", "stop", "stop_token_ids",
    "presence_penalty", "frequency_penalty", "repetition_penalty", "ignore_eos", "min_tokens",
    "skip_special_tokens", "include_stop_str_in_output", "logit_bias", "allowed_token_ids",
    "bad_words", "truncate_prompt_tokens",
)  # fmt: skip


# ---- /v1/completions -------------------------------------------------------------------------

PromptInput = str | list[str] | list[int] | list[list[int]]


class CompletionRequest(SamplingRequest):
    prompt: PromptInput
    max_tokens: Int64 | None = 16  # OpenAI's default for completions
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    # vLLM's extra: logprobs of the prompt tokens (and the top k), in each choice.
    prompt_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    echo: bool = False

    @field_validator("prompt", mode="before")
    @classmethod
    def _check_prompt(cls, prompt: Any) -> Any:
        # Checked by hand: pydantic's error for a failed 4-way union lists every branch.
        if isinstance(prompt, str) or _is_token_ids(prompt):
            if len(prompt) == 0:
                raise ValueError("prompt must not be empty")
            return prompt
        if isinstance(prompt, list) and prompt:
            if all(isinstance(p, str) for p in prompt) or all(_is_token_ids(p) for p in prompt):
                if len(prompt) > MAX_PROMPTS:
                    raise ValueError(
                        f"at most {MAX_PROMPTS} prompts per request, got {len(prompt)}"
                    )
                return prompt
        raise ValueError(
            "prompt must be a non-empty string, list of strings, list of token ids (ints) or "
            "list of token-id lists"
        )

    def to_sampling_params(self) -> SamplingParams:
        params = self._sampling_params(self.max_tokens, self.logprobs)
        params.prompt_logprobs = self.prompt_logprobs
        return params


def _is_token_ids(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(t, int) and not isinstance(t, bool) for t in value
    )


class CompletionLogProbs(BaseModel):
    text_offset: list[int] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    tokens: list[str] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)


class CompletionResponseChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogProbs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None  # vLLM extra: the stop string or token that ended it
    # vLLM extra, with `prompt_logprobs`: per prompt token {token id: {logprob, rank,
    # decoded_token}}, None for the first token.
    prompt_logprobs: list[dict[int, dict[str, Any]] | None] | None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionResponseChoice]
    usage: UsageInfo | None = None


class CompletionStreamResponse(CompletionResponse):
    """One SSE chunk: same shape as the full response, `choices` holds only the new text."""


# ---- /v1/chat/completions --------------------------------------------------------------------


class ChatMessage(OpenAIBaseModel):
    role: str
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None

    @field_validator("role")
    @classmethod
    def _check_role(cls, role: str) -> str:
        if role not in CHAT_ROLES:
            raise ValueError(f"role must be one of {', '.join(CHAT_ROLES)}; got {role!r}")
        return role

    @field_validator("content")
    @classmethod
    def _check_parts(cls, content: Any) -> Any:
        for part in content if isinstance(content, list) else ():
            if part.get("type") == "image_url":
                continue  # loaded and checked when the chat is rendered (chat_utils.py)
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ValueError(
                    'content parts must be {"type": "text", "text": str} or {"type": '
                    f'"image_url", "image_url": {{"url": ...}}}}, got {part!r}'
                )
        return content


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: Int64 | None = None  # deprecated by OpenAI in favour of max_completion_tokens
    # ge=1 here, not only in SamplingParams: an explicit 0 must be an error naming this field, not
    # a silent fall-back to max_tokens.
    max_completion_tokens: Int64 | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    add_generation_prompt: bool = True  # vLLM extra, passed to the chat template
    # Tool calling (stage 13): tools go to the chat template; a named or "required" choice
    # becomes a JSON-schema constraint, "auto" needs the server's tool-call parser.
    tools: list[ChatCompletionToolsParam] | None = None
    tool_choice: Literal["none", "auto", "required"] | ChatCompletionNamedToolChoiceParam | None = (
        None
    )
    parallel_tool_calls: bool = True

    @model_validator(mode="after")
    def _top_logprobs_need_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs can only be set when logprobs is true")
        if self.tool_choice is None:  # OpenAI's default: "auto" with tools, "none" without
            self.tool_choice = "auto" if self.tools else "none"
        if self.tool_choice != "none" and not self.tools:
            raise ValueError(f"tool_choice={self.tool_choice!r} needs tools")
        return self

    @property
    def forces_tool_call(self) -> bool:
        """A named function or "required": the output is generated under a tool schema."""
        return bool(self.tools) and self.tool_choice not in ("none", "auto")

    def to_sampling_params(self) -> SamplingParams:
        # None: generate until EOS or max_model_len (the engine fills in the room left).
        max_tokens = self.max_tokens
        if self.max_completion_tokens is not None:
            max_tokens = self.max_completion_tokens
        params = self._sampling_params(
            max_tokens, (self.top_logprobs or 0) if self.logprobs else None
        )
        if self.forces_tool_call:
            if params.structured_outputs is not None:
                raise ValueError(
                    f"tool_choice={self.tool_choice!r} already constrains the output; "
                    "drop response_format / structured_outputs"
                )
            schema = get_json_schema_from_tools(
                self.tool_choice
                if isinstance(self.tool_choice, str)
                else self.tool_choice.model_dump(),
                [t.model_dump() for t in self.tools],
                self.parallel_tool_calls,
            )
            params.structured_outputs = StructuredOutputsParams(json=schema)
        return params


class ChatLogProb(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class ChatLogProbsContent(ChatLogProb):
    top_logprobs: list[ChatLogProb] = Field(default_factory=list)


class ChatCompletionLogProbs(BaseModel):
    content: list[ChatLogProbsContent] | None = None


class ChatResponseMessage(BaseModel):
    role: str = "assistant"
    content: str | None = None
    tool_calls: list[ToolCall] = Field(default_factory=list)


class ChatCompletionResponseChoice(BaseModel):
    index: int
    message: ChatResponseMessage
    logprobs: ChatCompletionLogProbs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatCompletionResponseChoice]
    usage: UsageInfo | None = None


class DeltaMessage(BaseModel):
    role: str | None = None
    content: str | None = None
    tool_calls: list[DeltaToolCall] | None = None


class ChatCompletionResponseStreamChoice(BaseModel):
    index: int
    delta: DeltaMessage
    logprobs: ChatCompletionLogProbs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


class ChatCompletionStreamResponse(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatCompletionResponseStreamChoice]
    usage: UsageInfo | None = None
