"""Helpers shared by models: pipeline-parallel pieces and multimodal embedding merging.

Mirrors vllm/model_executor/models/utils.py.
- Stage 8 (pipeline parallel): `IntermediateTensors`, the activations a stage that is not the last
  returns instead of hidden states (the worker sends them to the next stage, whose model takes
  them in place of the token embeddings), and `PPMissingLayer`, the placeholder for a layer
  another stage owns (vLLM's class and `is_pp_missing_parameter`).
- Stage 10 (multimodal): a vision-language model's language model never sees pixels. The image
  placeholder tokens are embedded like any token, then those rows are OVERWRITTEN with the
  projected image embeddings, in order; from there on the decoder treats them as ordinary
  positions (same RoPE, same KV cache).
Next: llama.py and llava.py, which use them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class IntermediateTensors:
    """What crosses a stage boundary: the residual stream, in two halves (the residual add is
    fused into the next RMSNorm, so the sum is never materialised between layers)."""

    hidden_states: torch.Tensor  # [num_tokens, hidden_size]
    residual: torch.Tensor  # [num_tokens, hidden_size]


class PPMissingLayer(nn.Identity):
    """Stands in for a decoder layer that lives on another pipeline stage: no weights here, and
    the layer indices (and the checkpoint's names) stay those of the whole model."""


def is_pp_missing_parameter(name: str, model: nn.Module) -> bool:
    """Does checkpoint tensor `name` belong to a layer another stage owns?"""
    prefixes = getattr(model, "_pp_missing_prefixes", None)
    if prefixes is None:
        prefixes = tuple(f"{n}." for n, m in model.named_modules() if isinstance(m, PPMissingLayer))
        model._pp_missing_prefixes = prefixes  # the layout never changes once built
    return name.startswith(prefixes) if prefixes else False


def merge_multimodal_embeddings(
    inputs_embeds: torch.Tensor, is_multimodal: torch.Tensor, mm_embeds: torch.Tensor
) -> torch.Tensor:
    """inputs_embeds [T, hidden] with its `is_multimodal` rows [T] (bool) replaced, in order,
    by mm_embeds [num_mm_rows, hidden]."""
    num_rows = int(is_multimodal.sum())
    if num_rows != mm_embeds.shape[0]:
        raise ValueError(
            f"{num_rows} image placeholder positions but {mm_embeds.shape[0]} image embeddings"
        )
    inputs_embeds = inputs_embeds.clone()
    inputs_embeds[is_multimodal] = mm_embeds.to(inputs_embeds.dtype)
    return inputs_embeds
