"""Lesson 13 solutions: a grammar as a token mask, by hand, and the tool-call schema.

Written to be read next to the engine's versions: xgrammar fills the mask in C++ from tables it
precomputed (vllm_mini/structured_output/backend_xgrammar.py); utils.py packs, unpacks and
applies it. Try exercises.py first.
"""

from __future__ import annotations

from typing import Any

import regex
import torch


def allowed_tokens(text: str, vocab: list[str], pattern: str, eos_token_id: int) -> list[int]:
    allowed = []
    for token_id, token in enumerate(vocab):
        if token_id == eos_token_id or not token:
            continue  # EOS is judged below; an empty string can never make progress
        # partial=True: a match, or a string the regex could still complete by adding characters.
        if regex.fullmatch(pattern, text + token, partial=True) is not None:
            allowed.append(token_id)
    # Stopping is allowed only once the text is already a complete match.
    if regex.fullmatch(pattern, text) is not None:
        allowed.append(eos_token_id)
    return sorted(allowed)


def pack_bitmask(allowed_ids: list[int], vocab_size: int) -> torch.Tensor:
    words = [0] * ((vocab_size + 31) // 32)
    for token_id in allowed_ids:
        words[token_id // 32] |= 1 << (token_id % 32)
    # Bit 31 is the int32 sign bit: reinterpret each unsigned 32-bit word as signed.
    signed = [w - (1 << 32) if w >= 1 << 31 else w for w in words]
    return torch.tensor(signed, dtype=torch.int32)


def apply_mask(logits: torch.Tensor, bitmask: torch.Tensor) -> torch.Tensor:
    vocab_size = logits.shape[-1]
    shifts = torch.arange(32, dtype=torch.int32)
    bits = (bitmask.unsqueeze(-1) >> shifts) & 1  # [rows, words, 32]; >> keeps the sign, & 1 not
    allowed = bits.flatten(1)[:, :vocab_size].bool()  # padding bits past the vocabulary dropped
    return logits.masked_fill(~allowed, float("-inf"))


def masks_for_drafts(
    text: str, drafts: list[int], vocab: list[str], pattern: str, eos_token_id: int
) -> list[list[int]]:
    everything = list(range(len(vocab)))
    rows: list[list[int]] = []
    live = True  # False once a draft is refused or EOS is accepted: the rest is unconstrained
    for draft in drafts:
        if not live:
            rows.append(everything)
            continue
        allowed = allowed_tokens(text, vocab, pattern, eos_token_id)
        rows.append(allowed)
        if draft not in allowed or draft == eos_token_id:
            live = False  # the rejection sampler stops at a refused draft; EOS ends the grammar
        else:
            text += vocab[draft]  # walk forward: the next row is the state after this draft
    rows.append(allowed_tokens(text, vocab, pattern, eos_token_id) if live else everything)
    # Nothing to undo here: `text` is a local copy. The engine's cursor must roll back instead.
    return rows


def required_tool_schema(tools: list[dict[str, Any]]) -> dict[str, Any]:
    calls = []
    for tool in tools:
        function = tool["function"]
        parameters = function.get("parameters") or {"type": "object", "properties": {}}
        calls.append(
            {
                "properties": {
                    "name": {"type": "string", "enum": [function["name"]]},
                    "parameters": parameters,
                },
                "required": ["name", "parameters"],
            }
        )
    # A non-empty list of calls; each call is one of the tools, with that tool's arguments.
    return {"type": "array", "minItems": 1, "items": {"type": "object", "anyOf": calls}}
