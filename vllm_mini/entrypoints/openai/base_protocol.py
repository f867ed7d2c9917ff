"""The pieces every OpenAI body is built from: the base model, response formats, tools.

Stage 12 (base model) and stage 13 (response_format, tools, tool calls). Mirrors
vllm/entrypoints/serve/engine/protocol.py (OpenAIBaseModel) and
vllm/entrypoints/generate/base/protocol.py (ResponseFormat, FunctionDefinition, ToolCall). Kept
apart from protocol.py, which composes them into the completions and chat requests. Next:
protocol.py.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class OpenAIBaseModel(BaseModel):
    # NaN/inf are legal in Python's JSON parser but meaningless as sampling parameters.
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)


class JsonSchemaResponseFormat(OpenAIBaseModel):
    name: str = "response"
    description: str | None = None
    # `schema` would shadow a pydantic method: stored as json_schema, spelled "schema" in JSON.
    json_schema: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(OpenAIBaseModel):
    """OpenAI's response_format: plain text, any JSON object, or JSON matching a schema."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaResponseFormat | None = None


class FunctionDefinition(OpenAIBaseModel):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON schema of the arguments object


class ChatCompletionToolsParam(OpenAIBaseModel):
    type: Literal["function"] = "function"
    function: FunctionDefinition


class ChatCompletionNamedFunction(OpenAIBaseModel):
    name: str


class ChatCompletionNamedToolChoiceParam(OpenAIBaseModel):
    type: Literal["function"] = "function"
    function: ChatCompletionNamedFunction


class FunctionCall(BaseModel):
    name: str
    arguments: str  # JSON text


class ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class DeltaToolCall(ToolCall):
    index: int
