"""Processor: user inputs -> validated engine Requests.

Stage 5. Mirrors vllm/v1/engine/processor.py. Everything a client can get wrong is checked here,
before the request reaches the scheduler, so a bad request costs an error message and nothing
else: prompt type, empty prompt, token ids outside the vocabulary, a prompt that leaves no room to
generate within max_model_len, or a request that could never fit in the whole KV cache.
"""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedTokenizerBase

from vllm_mini.config import VllmConfig
from vllm_mini.sampling_params import SamplingParams

# What LLM.generate and the engine accept as a prompt (vLLM's PromptType, simplified).
PromptType = str | dict[str, Any]


class Processor:
    def __init__(
        self, vllm_config: VllmConfig, tokenizer: PreTrainedTokenizerBase, num_kv_blocks: int
    ) -> None:
        self.model_config = vllm_config.model_config
        self.tokenizer = tokenizer
        self.kv_capacity_tokens = num_kv_blocks * vllm_config.cache_config.block_size

    def tokenize_prompt(self, prompt: PromptType) -> tuple[str | None, list[int]]:
        """Return (prompt text or None, prompt token ids)."""
        if isinstance(prompt, str):
            return prompt, self.tokenizer.encode(prompt)
        if isinstance(prompt, dict):
            if "prompt_token_ids" in prompt:
                ids = prompt["prompt_token_ids"]
                if not isinstance(ids, list) or not all(isinstance(t, int) for t in ids):
                    raise ValueError("prompt_token_ids must be a list of ints")
                return prompt.get("prompt"), list(ids)
            if isinstance(prompt.get("prompt"), str):
                return prompt["prompt"], self.tokenizer.encode(prompt["prompt"])
        raise ValueError(
            "prompt must be a string, {'prompt': str} or {'prompt_token_ids': list[int]}; "
            f"got {type(prompt).__name__}"
        )

    def validate(self, prompt_token_ids: list[int], params: SamplingParams) -> SamplingParams:
        """Check the request against the model and return params with max_tokens filled in."""
        max_len = self.model_config.max_model_len
        vocab = self.model_config.vocab_size
        n = len(prompt_token_ids)
        if n == 0:
            raise ValueError("the prompt is empty: it must contain at least one token")
        bad = [t for t in prompt_token_ids if not 0 <= t < vocab]
        if bad:
            raise ValueError(f"prompt token ids must be in [0, {vocab}), got {bad[:5]}")
        bad_stop = [t for t in params.stop_token_ids or () if t >= vocab]
        if bad_stop:  # the sampler indexes logits with them: an unchecked id crashes the step
            raise ValueError(f"stop_token_ids must be in [0, {vocab}), got {bad_stop[:5]}")
        if n >= max_len:
            raise ValueError(
                f"the prompt has {n} tokens; it must be shorter than max_model_len ({max_len}) "
                "to leave room for at least one generated token"
            )
        if params.max_tokens is None:
            params = params.clone()
            params.max_tokens = max_len - n
        if params.max_tokens > max_len - n:
            raise ValueError(
                f"max_tokens must be <= {max_len - n} (max_model_len {max_len} minus the prompt's "
                f"{n} tokens), got {params.max_tokens}"
            )
        if params.logprobs is not None and params.logprobs > self.model_config.max_logprobs:
            raise ValueError(
                f"logprobs must be in [0, {self.model_config.max_logprobs}], got {params.logprobs}"
            )
        if n + params.max_tokens > self.kv_capacity_tokens:
            raise ValueError(
                f"the request needs up to {n + params.max_tokens} tokens of KV cache but the whole "
                f"cache holds {self.kv_capacity_tokens}; lower max_tokens or enlarge the cache"
            )
        return params
