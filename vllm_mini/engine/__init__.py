"""The engine: EngineCore (schedule -> execute -> update), LLMEngine and AsyncLLM around it.

Stage 5. Mirrors vllm/v1/engine/ (this file: vllm/v1/engine/__init__.py, where vLLM defines the
messages that cross from the front end to the core). Read core.py, then llm_engine.py, then
async_llm.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from vllm_mini.lora.request import LoRARequest
from vllm_mini.multimodal.inputs import MultiModalFeatureSpec
from vllm_mini.sampling_params import SamplingParams


@dataclass
class EngineCoreRequest:
    """One sequence, validated and tokenized by the front end (Processor), for the core.

    In vLLM this is the message serialized to the engine-core process; the core turns it into its
    own `Request` (adding block hashes, status, computed-token counts). Everything about text —
    prompts, stop strings, detokenization — stays in the front end. With n > 1 the front end sends
    one EngineCoreRequest per sample (its "child" requests), each with n = 1.
    """

    request_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    eos_token_id: int | None
    arrival_time: float
    priority: int = 0
    lora_request: LoRARequest | None = None
    # Joins the first block's prefix-cache hash: only requests with the same salt share blocks
    # (vLLM's cache_salt, against timing attacks that probe what others have cached).
    cache_salt: str | None = None
    # Stage 10: the prompt's images (placeholder spans, content hashes, pixel values).
    mm_features: list[MultiModalFeatureSpec] | None = None
