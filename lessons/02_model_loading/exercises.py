"""Lesson 02 exercises: RMSNorm, rotary embedding (with Llama 3 scaling), the weight-name mapping
of load_weights, Q4_1 dequantization, and a new model: Gemma (the guide's "how to add a model").

Each function re-implements something the engine already has and the tests compare yours with
it; Gemma is new to the engine, and the tests compare it with HF transformers' own Gemma.
LESSON_IMPL=exercises .venv/bin/pytest lessons/02_model_loading
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from vllm_mini.config import VllmConfig


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm over the last dimension: x / sqrt(mean(x^2) + eps) * weight.

    Compute the statistics in float32 and cast back to x's dtype before multiplying by weight.
    With a residual, first add it (x = x + residual), then return (norm(x), x): the engine's
    fused "add + norm" that Llama blocks call as `hidden, residual = norm(hidden, residual)`.
    """
    raise NotImplementedError(
        "rms_norm: normalise by the root mean square of the last dimension (statistics in "
        "float32), optionally after the residual add. RMSNorm.forward does it (vllm_mini/"
        "model_executor/layers/layernorm.py; vLLM: vllm/model_executor/layers/layernorm.py, "
        "RMSNorm.forward_native)"
    )


def apply_rope(
    positions: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    head_size: int,
    base: float,
    rope_scaling: dict[str, Any] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q [T, H*D] and k [T, H_kv*D] by their token positions [T], HF/NeoX style.

    inv_freq[i] = base^(-2i/D) for i < D/2; angle = position * inv_freq. Split each head in halves
    x1, x2 and return [x1*cos - x2*sin, x2*cos + x1*sin].

    rope_scaling={"rope_type": "llama3", "factor", "low_freq_factor", "high_freq_factor",
    "original_max_position_embeddings"} rescales inv_freq first. With wavelen = 2*pi/inv_freq and
    L = original_max_position_embeddings: keep inv_freq where wavelen < L / high_freq_factor,
    divide it by factor where wavelen > L / low_freq_factor, and in between blend
    (1 - s) * inv_freq / factor + s * inv_freq with s = (L / wavelen - low) / (high - low).
    """
    raise NotImplementedError(
        "apply_rope: rotate each head's two halves of q and k by position * inv_freq, after the "
        "llama3 rescaling of inv_freq if asked. RotaryEmbedding does it (vllm_mini/"
        "model_executor/layers/rotary_embedding.py; vLLM: the rotary_embedding/ package in "
        "vllm/model_executor/layers/, base.py and llama3_rope.py)"
    )


def map_weight_name(hf_name: str) -> tuple[str, str | int | None]:
    """Map an HF checkpoint name to (our parameter name, shard id).

    q/k/v_proj -> qkv_proj with shard 'q'/'k'/'v'; gate/up_proj -> gate_up_proj with 0/1;
    any other name unchanged, with None.
    """
    raise NotImplementedError(
        "map_weight_name: send q/k/v and gate/up checkpoint names to the packed parameters, "
        "with their shard ids. LlamaForCausalLM.stacked_params_mapping and load_weights do it "
        "(vllm_mini/model_executor/models/llama.py; vLLM: vllm/model_executor/models/llama.py, "
        "LlamaModel.load_weights)"
    )


def dequantize_q4_1(blocks: np.ndarray) -> torch.Tensor:
    """Expand Q4_1 blocks (uint8 [n, 20]) into float32 weights [n * 32].

    Each 20-byte block: bytes 0-1 the float16 scale d, bytes 2-3 the float16 minimum m, bytes 4-19
    sixteen bytes of 4-bit values q. Byte j holds weight j in its low nibble and weight j + 16 in
    its high nibble. weight = d * q + m.
    """
    raise NotImplementedError(
        "dequantize_q4_1: unpack each 20-byte block into 32 floats d * q + m. The GGUF loader "
        "calls gguf.quants.dequantize for this (vllm_mini/model_executor/model_loader/"
        "gguf_loader.py); lessons/02_model_loading/demo.py decodes one block by hand"
    )


# ---- FAQ "how to add a model": Gemma ----------------------------------------------------------


class GemmaForCausalLM(nn.Module):
    """Gemma, added to the engine from outside it, as vLLM lets you add an out-of-tree model.

    Gemma is Llama with three changes, each checked by the tests against HF's GemmaForCausalLM:
    - its RMSNorm multiplies by (1 + weight), computed in float32 before casting back;
    - the token embeddings are multiplied by sqrt(hidden_size) before the first layer;
    - its MLP is GELU (tanh approximation) of gate, times up, where Llama uses SiLU.
    (head_dim may differ from hidden_size / num_heads; LlamaAttention already reads it.)

    Build it as every model is built, `GemmaForCausalLM(vllm_config=..., prefix="")`, with
    `forward(input_ids, positions)`, `compute_logits(hidden_states)` and `load_weights(weights)`.
    Reuse what you can from vllm_mini/model_executor/models/llama.py (its classes, its
    stacked_params_mapping and load_weights). The tests register it without touching the
    engine, the way you would:

        ModelRegistry.register_model(
            "GemmaForCausalLM", "lessons.02_model_loading.exercises", "GemmaForCausalLM"
        )

    then load a tiny random Gemma saved by transformers and compare logits and greedy tokens.
    """

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        raise NotImplementedError(
            "GemmaForCausalLM: Llama with (1 + weight) RMSNorm, embeddings scaled by "
            "sqrt(hidden_size) and a GELU-tanh MLP. Start from LlamaForCausalLM in "
            "vllm_mini/model_executor/models/llama.py; vLLM's version is "
            "vllm/model_executor/models/gemma.py, registered in "
            "vllm/model_executor/models/registry.py"
        )
