"""Lesson 10 exercises: how an image becomes tokens, and what the engine must remember about it.

Fill in each function, then run:  LESSON_IMPL=exercises .venv/bin/pytest lessons/10_multimodal
One at a time with -k: expand | merge | rows | keys. The tests compare your answers with the
engine's expand_placeholders, merge_multimodal_embeddings, PlaceholderRange.overlap and
generate_block_hash_extra_keys, on hand cases and random ones, and run the tiny LLaVA model with
your merge to check it reproduces HF transformers' logits.
"""

from __future__ import annotations

import torch


def expand_placeholders(
    prompt_token_ids: list[int], image_token_id: int, num_image_tokens: list[int]
) -> tuple[list[int], list[tuple[int, int]]]:
    """Replace the i-th `image_token_id` by num_image_tokens[i] copies of it.

    Engine: expand_placeholders in vllm_mini/multimodal/processing.py. Return the new token ids
    and one (offset, length) span per image, offsets counted in the NEW ids. Raise ValueError if
    the prompt has a different number of placeholders than there are images.
    """
    raise NotImplementedError(
        "expand_placeholders: walk the ids; at each image token record (len(out), n) and emit n copies. Engine: multimodal/processing.py"
    )


def merge_embeddings(
    inputs_embeds: torch.Tensor, is_multimodal: torch.Tensor, mm_embeds: torch.Tensor
) -> torch.Tensor:
    """inputs_embeds [T, hidden] with its is_multimodal rows ([T] bool) replaced, in order, by
    mm_embeds [num_true, hidden]. Do not modify inputs_embeds in place.

    Engine: merge_multimodal_embeddings in vllm_mini/model_executor/models/utils.py.
    """
    raise NotImplementedError(
        "merge_embeddings: clone, then boolean-index assignment. Engine: models/utils.py"
    )


def rows_for_step(
    span: tuple[int, int], num_computed: int, num_scheduled: int
) -> tuple[int, int] | None:
    """Which rows [lo, hi) of an image's encoder output does this step use?

    Engine: PlaceholderRange.overlap, used by worker/multimodal_runner.py. The image fills
    positions [offset, offset + length); the step computes positions [num_computed,
    num_computed + num_scheduled). Return the overlap as rows of the image (0 = its first
    placeholder token), or None if the step does not touch the image.
    """
    raise NotImplementedError(
        "rows_for_step: intersect the two ranges, then subtract the image's offset. Engine: multimodal/inputs.py"
    )


def block_extra_keys(
    images: list[tuple[int, int, str]], block_start: int, block_end: int
) -> tuple[str, ...] | None:
    """The extra keys of the KV block holding positions [block_start, block_end).

    Engine: generate_block_hash_extra_keys in vllm_mini/core/kv_cache_utils.py (no LoRA, no
    salt). `images` are (offset, length, content hash) in prompt order. Every image whose span
    overlaps the block contributes its hash, in order; None if no image touches the block.
    """
    raise NotImplementedError(
        "block_extra_keys: the hashes of the images whose span meets the block. Engine: core/kv_cache_utils.py"
    )
