"""Lesson 10 solutions (the engine's own answers, written out). See exercises.py."""

from __future__ import annotations

import torch


def expand_placeholders(
    prompt_token_ids: list[int], image_token_id: int, num_image_tokens: list[int]
) -> tuple[list[int], list[tuple[int, int]]]:
    if prompt_token_ids.count(image_token_id) != len(num_image_tokens):
        raise ValueError("one image placeholder per image")
    out: list[int] = []
    spans: list[tuple[int, int]] = []
    for token in prompt_token_ids:
        if token == image_token_id:
            n = num_image_tokens[len(spans)]
            spans.append((len(out), n))
            out.extend([image_token_id] * n)
        else:
            out.append(token)
    return out, spans


def merge_embeddings(
    inputs_embeds: torch.Tensor, is_multimodal: torch.Tensor, mm_embeds: torch.Tensor
) -> torch.Tensor:
    merged = inputs_embeds.clone()
    merged[is_multimodal] = mm_embeds
    return merged


def rows_for_step(
    span: tuple[int, int], num_computed: int, num_scheduled: int
) -> tuple[int, int] | None:
    offset, length = span
    lo = max(num_computed, offset)
    hi = min(num_computed + num_scheduled, offset + length)
    return (lo - offset, hi - offset) if lo < hi else None


def block_extra_keys(
    images: list[tuple[int, int, str]], block_start: int, block_end: int
) -> tuple[str, ...] | None:
    keys = tuple(
        h for offset, length, h in images if offset < block_end and block_start < offset + length
    )
    return keys or None
