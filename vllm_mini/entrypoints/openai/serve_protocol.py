"""Wire format of the server's own routes: /v1/models, /tokenize, /detokenize, LoRA loading.

Stage 12. Mirrors vllm/entrypoints/openai/models/protocol.py,
vllm/entrypoints/serve/tokenize/protocol.py and vllm/entrypoints/serve/lora/protocol.py. These are vLLM's routes beside OpenAI's (only
/v1/models is OpenAI's too); protocol.py holds the completions and chat bodies. Next:
serving_models.py.
"""

from __future__ import annotations

import time
from typing import Literal

from pydantic import BaseModel, Field, model_validator

from vllm_mini.entrypoints.openai.protocol import ChatMessage, OpenAIBaseModel

# ---- /v1/models, /tokenize, /detokenize ------------------------------------------------------


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "vllm_mini"
    root: str | None = None
    parent: str | None = None
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class TokenizeRequest(OpenAIBaseModel):
    """vLLM's two tokenize bodies in one: `prompt` (completions) or `messages` (chat)."""

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = Field(None, min_length=1)
    add_special_tokens: bool | None = None  # default: True for a prompt, False for messages
    add_generation_prompt: bool = True

    @model_validator(mode="after")
    def _exactly_one_input(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of prompt or messages")
        return self


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]


class DetokenizeRequest(OpenAIBaseModel):
    model: str | None = None
    tokens: list[int]


class DetokenizeResponse(BaseModel):
    prompt: str


# ---- /v1/load_lora_adapter, /v1/unload_lora_adapter (vLLM's, not OpenAI's) --------------------


class LoadLoRAAdapterRequest(OpenAIBaseModel):
    lora_name: str  # the `model` name clients will use
    lora_path: str  # a local PEFT adapter directory (adapter_config.json + weights)


class UnloadLoRAAdapterRequest(OpenAIBaseModel):
    lora_name: str
