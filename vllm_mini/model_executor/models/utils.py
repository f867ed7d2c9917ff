"""Helpers shared by models: merging multimodal embeddings into the text embeddings.

Stage 10. Mirrors vllm/model_executor/models/utils.py. A vision-language model's language model
never sees pixels: the prompt's image placeholder tokens are embedded like any token, and then
those rows are OVERWRITTEN with the projected image embeddings, in order. From there on the
decoder treats them as ordinary positions (same RoPE, same KV cache). Next: llava.py.
"""

from __future__ import annotations

import torch


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
