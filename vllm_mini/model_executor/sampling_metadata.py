"""SamplingMetadata: one batch's sampling parameters as tensors, built once per step.

Mirrors vllm/v1/sample/metadata.py. The sampler works on the whole batch at once, so per-request
Python values (temperature, top_p, penalties, ...) become [num_reqs] tensors; a field is None when
no request needs it, so the common cases (all greedy, no penalties) skip that work entirely.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from vllm_mini.sampling_params import SamplingParams, SamplingType


@dataclass
class SamplingMetadata:
    temperature: torch.Tensor  # [B]; greedy rows hold 1.0 and are argmax-ed instead
    greedy_mask: torch.Tensor  # [B] bool
    all_greedy: bool
    all_random: bool
    top_p: torch.Tensor | None  # [B] or None
    top_k: torch.Tensor | None  # [B] (vocab size where disabled) or None
    min_p: torch.Tensor | None  # [B] or None
    generators: dict[int, torch.Generator]  # row -> generator for seeded requests
    max_num_logprobs: int | None
    no_penalties: bool
    prompt_token_ids: torch.Tensor | None  # [B, max_prompt_len], padded with vocab_size
    output_token_ids: list[list[int]]
    presence_penalties: torch.Tensor | None
    frequency_penalties: torch.Tensor | None
    repetition_penalties: torch.Tensor | None
    min_tokens: dict[int, tuple[int, set[int]]]  # row -> (min_tokens, ids masked until then)
    # Per-row logits controls (rows without them are absent): bias by token, the only tokens
    # allowed, and banned token sequences.
    logit_bias: dict[int, dict[int, float]] = field(default_factory=dict)
    allowed_token_ids: dict[int, list[int]] = field(default_factory=dict)
    bad_words: dict[int, list[list[int]]] = field(default_factory=dict)

    @classmethod
    def from_params(
        cls,
        params: list[SamplingParams],
        prompt_token_ids: list[list[int]],
        output_token_ids: list[list[int]],
        generators: dict[int, torch.Generator],
        vocab_size: int,
        device: torch.device,
    ) -> SamplingMetadata:
        greedy = [p.sampling_type == SamplingType.GREEDY for p in params]
        temps = [1.0 if g else p.temperature for p, g in zip(params, greedy)]

        def tensor(values, dtype=torch.float32):
            return torch.tensor(values, dtype=dtype, device=device)

        use_top_p = any(p.top_p < 1.0 for p in params)
        use_top_k = any(p.top_k > 0 for p in params)
        use_min_p = any(p.min_p > 0.0 for p in params)
        no_penalties = all(
            p.presence_penalty == 0 and p.frequency_penalty == 0 and p.repetition_penalty == 1
            for p in params
        )
        prompt_tensor = None
        if not no_penalties:
            width = max(len(ids) for ids in prompt_token_ids)
            prompt_tensor = torch.full((len(params), width), vocab_size, dtype=torch.long)
            for i, ids in enumerate(prompt_token_ids):
                prompt_tensor[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            prompt_tensor = prompt_tensor.to(device)
        min_tokens = {}
        for i, p in enumerate(params):
            if p.min_tokens and len(output_token_ids[i]) < p.min_tokens:
                # all_stop_token_ids holds stop_token_ids plus EOS (added by the engine).
                min_tokens[i] = (p.min_tokens, set(p.all_stop_token_ids))
        logprobs = [p.logprobs for p in params if p.logprobs is not None]
        return cls(
            temperature=tensor(temps),
            greedy_mask=tensor(greedy, torch.bool),
            all_greedy=all(greedy),
            all_random=not any(greedy),
            top_p=tensor([p.top_p for p in params]) if use_top_p else None,
            top_k=tensor([p.top_k if p.top_k > 0 else vocab_size for p in params], torch.long)
            if use_top_k
            else None,
            min_p=tensor([p.min_p for p in params]) if use_min_p else None,
            generators=generators,
            max_num_logprobs=max(logprobs) if logprobs else None,
            no_penalties=no_penalties,
            prompt_token_ids=prompt_tensor,
            output_token_ids=output_token_ids,
            presence_penalties=None
            if no_penalties
            else tensor([p.presence_penalty for p in params]),
            frequency_penalties=None
            if no_penalties
            else tensor([p.frequency_penalty for p in params]),
            repetition_penalties=None
            if no_penalties
            else tensor([p.repetition_penalty for p in params]),
            min_tokens=min_tokens,
            logit_bias={i: p.logit_bias for i, p in enumerate(params) if p.logit_bias},
            allowed_token_ids={
                i: p.allowed_token_ids for i, p in enumerate(params) if p.allowed_token_ids
            },
            bad_words={
                i: p.bad_words_token_ids for i, p in enumerate(params) if p.bad_words_token_ids
            },
        )
