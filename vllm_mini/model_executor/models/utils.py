"""Pipeline-parallel pieces a model needs: the activations passed between stages, and placeholders
for the layers another stage owns.

Stage 8. Mirrors vllm/model_executor/models/utils.py (PPMissingLayer, is_pp_missing_parameter);
IntermediateTensors is vLLM's class of the same name. A stage that is not the last returns
`IntermediateTensors` instead of hidden states; the worker sends them to the next stage, whose
model takes them in place of the token embeddings. Next: llama.py, which uses both.
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
