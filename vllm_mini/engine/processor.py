"""Processor: user inputs -> validated EngineCoreRequests.

Stage 5. Mirrors vllm/v1/engine/input_processor.py (processor.py in older vLLM). Everything a client can get wrong is checked here,
once, before the request reaches the scheduler, so a bad request costs an error message and
nothing else: prompt type, empty prompt, token ids that are not ints or lie outside the
vocabulary, a prompt longer than max_model_len, or a request that could never fit in the whole KV
cache. The server adds only the OpenAI API's own policy on top (`check_context_length` with
`strict=True`), from this same function.

Lengths, as in vLLM: a prompt may be as long as max_model_len. Generation stops at max_model_len
whatever max_tokens says (the scheduler finishes the request with "length"), so the offline API
never rejects a large max_tokens; max_tokens=None means "until max_model_len".
"""

from __future__ import annotations

import time
from typing import Any

from transformers import PreTrainedTokenizerBase

from vllm_mini.config import VllmConfig
from vllm_mini.engine import EngineCoreRequest
from vllm_mini.lora.lora_model import LoRAModel, expected_lora_shapes
from vllm_mini.lora.request import LoRARequest
from vllm_mini.multimodal import MULTIMODAL_REGISTRY
from vllm_mini.sampling_params import SamplingParams
from vllm_mini.structured_output import validate_structured_output_params

# What LLM.generate and the engine accept as a prompt (vLLM's PromptType, simplified).
PromptType = str | dict[str, Any]


def check_context_length(
    num_prompt_tokens: int,
    max_tokens: int | None,
    max_model_len: int,
    *,
    input_name: str = "prompt",
    strict: bool = False,
) -> None:
    """The one length check. Offline (strict=False): the prompt may fill the context.

    The OpenAI server (strict=True) follows vLLM's serving layer: the input must leave room for
    one generated token, and an explicit max_tokens must fit in what is left.
    """
    if num_prompt_tokens > max_model_len or (strict and num_prompt_tokens >= max_model_len):
        room = "shorter than" if strict else "at most"
        raise ValueError(
            f"{input_name} too long: {num_prompt_tokens} tokens, but this model's maximum context "
            f"length (max_model_len) is {max_model_len}; the input must be {room} that"
            + (" to leave room to generate at least one token" if strict else "")
        )
    if strict and max_tokens is not None and num_prompt_tokens + max_tokens > max_model_len:
        raise ValueError(
            f"max_tokens must be <= {max_model_len - num_prompt_tokens} (max_model_len "
            f"{max_model_len} minus the {num_prompt_tokens} input tokens), got {max_tokens}"
        )


def _is_token_id(t: object) -> bool:
    # bool is a subclass of int in Python: [True, 5] would silently become token ids [1, 5].
    return isinstance(t, int) and not isinstance(t, bool)


class Processor:
    def __init__(
        self, vllm_config: VllmConfig, tokenizer: PreTrainedTokenizerBase, num_kv_blocks: int
    ) -> None:
        self.model_config = vllm_config.model_config
        self.tokenizer = tokenizer
        self.eos_token_id = tokenizer.eos_token_id
        self.kv_capacity_tokens = num_kv_blocks * vllm_config.cache_config.block_size
        self.lora_config = vllm_config.lora_config
        self.structured_outputs_backend = vllm_config.structured_outputs_config.resolved_backend
        self._checked_loras: dict[int, LoRARequest] = {}  # adapters already read and checked
        self._mm_processor = None  # built on the first request with images (stage 10)

    def check_lora(self, lora_request: LoRARequest | None) -> None:
        """A bad adapter is the caller's error, raised here before anything is queued: the core
        loads it again when a step needs it, and must never meet a file it cannot use."""
        if lora_request is None:
            return
        if not isinstance(lora_request, LoRARequest):
            raise ValueError(f"lora_request must be a LoRARequest, got {lora_request!r}")
        if self.lora_config is None:
            raise ValueError("lora_request given but LoRA is off: start with enable_lora=True")
        known = self._checked_loras.get(lora_request.lora_int_id)
        if (
            known is not None
            and known == lora_request
            and known.lora_path == lora_request.lora_path
        ):
            return
        if known is not None:
            raise ValueError(
                f"lora_int_id {lora_request.lora_int_id} is already {known.lora_name!r} "
                f"({known.lora_path}); give another adapter another id"
            )
        LoRAModel.from_local_checkpoint(
            lora_request.lora_path,
            lora_request.lora_int_id,
            self.lora_config.max_lora_rank,
            expected_lora_shapes(self.model_config),
        )
        self._checked_loras[lora_request.lora_int_id] = lora_request

    def forget_lora(self, lora_int_id: int) -> None:
        self._checked_loras.pop(lora_int_id, None)

    def tokenize_prompt(self, prompt: PromptType) -> tuple[str | None, list[int]]:
        """Return (prompt text or None, prompt token ids)."""
        if isinstance(prompt, str):
            return prompt, self.tokenizer.encode(prompt)
        if isinstance(prompt, dict):
            if "prompt_token_ids" in prompt:
                ids = prompt["prompt_token_ids"]
                if not isinstance(ids, list) or not all(_is_token_id(t) for t in ids):
                    bad = [t for t in ids if not _is_token_id(t)] if isinstance(ids, list) else ids
                    raise ValueError(
                        f"prompt_token_ids must be a list of ints, got {type(ids).__name__} "
                        f"with {bad[:5] if isinstance(bad, list) else bad!r}"
                    )
                return prompt.get("prompt"), list(ids)
            if isinstance(prompt.get("prompt"), str):
                return prompt["prompt"], self.tokenizer.encode(prompt["prompt"])
        raise ValueError(
            "prompt must be a string, {'prompt': str} or {'prompt_token_ids': list[int]}; "
            f"got {type(prompt).__name__}"
        )

    def process_inputs(
        self,
        request_id: str,
        prompt: PromptType,
        params: SamplingParams,
        arrival_time: float | None = None,
        priority: int = 0,
        lora_request: LoRARequest | None = None,
    ) -> tuple[str | None, EngineCoreRequest]:
        """Tokenize and validate; return (prompt text, the request for the core)."""
        if not isinstance(priority, int) or isinstance(priority, bool):
            raise ValueError(f"priority must be an int, got {priority!r}")
        self.check_lora(lora_request)
        prompt_text, prompt_ids = self.tokenize_prompt(prompt)
        prompt_ids, mm_features = self.process_multimodal(prompt, prompt_ids, params)
        keep = params.truncate_prompt_tokens
        if keep is not None:  # the prompt's *end* is what the next token depends on most
            keep = self.model_config.max_model_len if keep == -1 else keep
            if len(prompt_ids) > keep:
                prompt_ids, prompt_text = prompt_ids[-keep:], None
        cache_salt = prompt.get("cache_salt") if isinstance(prompt, dict) else None
        if cache_salt is not None and (not isinstance(cache_salt, str) or not cache_salt):
            raise ValueError(f"cache_salt must be a non-empty string, got {cache_salt!r}")
        params = self.validate(prompt_ids, params)
        request = EngineCoreRequest(
            request_id=request_id,
            prompt_token_ids=prompt_ids,
            sampling_params=params,
            eos_token_id=self.eos_token_id,
            arrival_time=arrival_time if arrival_time is not None else time.monotonic(),
            priority=priority,
            lora_request=lora_request,
            cache_salt=cache_salt,
            mm_features=mm_features,
        )
        return prompt_text, request

    @property
    def image_placeholder(self) -> str | None:
        """The text a chat message's image part becomes; None for a text-only model."""
        if not MULTIMODAL_REGISTRY.supports_multimodal_inputs(self.model_config):
            return None
        return self._get_mm_processor().image_placeholder

    def _get_mm_processor(self):
        if self._mm_processor is None:  # raises for a text-only model
            self._mm_processor = MULTIMODAL_REGISTRY.create_processor(
                self.model_config, self.tokenizer
            )
        return self._mm_processor

    def process_multimodal(
        self, prompt: PromptType, prompt_ids: list[int], params: SamplingParams
    ) -> tuple[list[int], list | None]:
        """Stage 10: expand image placeholders and process the images of a prompt dict's
        "multi_modal_data" (multimodal/processing.py); prompts without it pass through."""
        mm_data = prompt.get("multi_modal_data") if isinstance(prompt, dict) else None
        if mm_data is None:
            return prompt_ids, None
        if params.truncate_prompt_tokens is not None:
            raise ValueError("truncate_prompt_tokens cannot be used with multi_modal_data")
        processed = self._get_mm_processor().apply(prompt_ids, mm_data)
        return processed.prompt_token_ids, processed.mm_features

    def validate(self, prompt_token_ids: list[int], params: SamplingParams) -> SamplingParams:
        """Check the request against the model; return a copy with max_tokens and EOS filled in."""
        max_len = self.model_config.max_model_len
        vocab = self.model_config.vocab_size
        n = len(prompt_token_ids)
        if n == 0:
            raise ValueError("prompt is empty: it must contain at least one token")
        bad = [t for t in prompt_token_ids if not 0 <= t < vocab]
        if bad:
            raise ValueError(f"prompt token ids must be in [0, {vocab}), got {bad[:5]}")
        bad_stop = [t for t in params.stop_token_ids or () if t >= vocab]
        if bad_stop:  # the sampler indexes logits with them: an unchecked id crashes the step
            raise ValueError(f"stop_token_ids must be in [0, {vocab}), got {bad_stop[:5]}")
        for name, ids in (
            ("logit_bias", list(params.logit_bias or ())),
            ("allowed_token_ids", params.allowed_token_ids or []),
        ):
            out_of_range = [t for t in ids if t >= vocab]
            if out_of_range:
                raise ValueError(
                    f"{name} token ids must be in [0, {vocab}), got {out_of_range[:5]}"
                )
        check_context_length(n, params.max_tokens, max_len)
        if params.logprobs is not None and params.logprobs > self.model_config.max_logprobs:
            raise ValueError(
                f"logprobs must be in [0, {self.model_config.max_logprobs}], got {params.logprobs}"
            )
        if params.structured_outputs is not None:
            validate_structured_output_params(
                params.structured_outputs, self.structured_outputs_backend
            )
        params = params.clone()
        if params.max_tokens is None:
            # Until the context is full (a prompt of exactly max_model_len still gets one token).
            params.max_tokens = max(1, max_len - n)
        # The most tokens this request can ever hold: generation stops at max_model_len.
        needed = min(n + params.max_tokens, max_len)
        if needed > self.kv_capacity_tokens:
            raise ValueError(
                f"the request needs up to {needed} tokens of KV cache but the whole cache holds "
                f"{self.kv_capacity_tokens}; lower max_tokens or enlarge the cache"
            )
        params.update_from_generation_config(self.eos_token_id)
        if params.bad_words:
            params.bad_words_token_ids = self._bad_words_token_ids(params.bad_words)
        return params

    def _bad_words_token_ids(self, words: list[str]) -> list[list[int]]:
        """Each bad word as token sequences, as vLLM does: the word as written and, for a word
        that may follow another one, with a leading space (BPE vocabularies encode the two
        differently). A sequence is banned when the output ends with all its tokens but the last."""
        sequences = []
        for word in words:
            for variant in (word, " " + word.lstrip()):
                ids = self.tokenizer.encode(variant, add_special_tokens=False)
                if ids and ids not in sequences:
                    sequences.append(ids)
        return sequences
