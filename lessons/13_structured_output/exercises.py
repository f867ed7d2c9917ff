"""Lesson 13 exercises: a grammar as a token mask, by hand, and the tool-call schema.

Fill in each function, then run:  LESSON_IMPL=exercises .venv/bin/pytest lessons/13_structured_output
One at a time with -k: allowed | pack | apply | drafts | tool. The tests compare your masks with the ones
xgrammar fills through the engine's grammar class (vllm_mini/structured_output/backend_xgrammar.py),
on a toy vocabulary and on SmolLM2's 49152 tokens, and with the engine's unpack_bitmask and
apply_token_bitmask_reference (vllm_mini/structured_output/utils.py), and the manager's
grammar_bitmask (vllm_mini/structured_output/__init__.py) for speculative drafts.
"""

from __future__ import annotations

from typing import Any

import torch


def allowed_tokens(text: str, vocab: list[str], pattern: str, eos_token_id: int) -> list[int]:
    """The ids of the tokens that may come next, sorted: the constraint as a set of tokens.

    Engine: a grammar's fill_bitmask (xgrammar's GrammarMatcher.fill_next_token_bitmask).
    `text` is the output so far (it already fits `pattern`); vocab[i] is token i's text. Token i
    (not EOS) is allowed when text + vocab[i] can still become a full match of `pattern`:
    `regex.fullmatch(pattern, text + vocab[i], partial=True)` is not None (the `regex` package,
    not `re`: only it has partial matching). Skip empty strings. EOS (eos_token_id) is allowed
    exactly when `text` itself is already a full match.
    """
    raise NotImplementedError(
        "allowed_tokens: keep token i when regex.fullmatch(pattern, text + vocab[i], partial=True) matches; add EOS when text fully matches. Engine: fill_bitmask in structured_output/backend_xgrammar.py"
    )


def pack_bitmask(allowed_ids: list[int], vocab_size: int) -> torch.Tensor:
    """int32 [ceil(vocab_size / 32)]: bit t % 32 of word t // 32 is set when token t is allowed.

    Engine: the row layout of StructuredOutputBackend.allocate_token_bitmask; unpack_bitmask in
    structured_output/utils.py reads it back. Build each word as a Python int, then mind bit 31:
    int32 is signed, so a word of 2**31 or more must be stored as word - 2**32.
    """
    raise NotImplementedError(
        "pack_bitmask: words[t // 32] |= 1 << (t % 32) for each allowed t; words >= 2**31 become w - 2**32; torch.tensor(..., dtype=torch.int32). Engine: unpack_bitmask in structured_output/utils.py"
    )


def apply_mask(logits: torch.Tensor, bitmask: torch.Tensor) -> torch.Tensor:
    """logits [rows, V] with every forbidden token set to -inf (a new tensor; the input stays).

    Engine: apply_token_bitmask_reference in structured_output/utils.py (and xgrammar's C++
    kernel beside it). bitmask is int32 [rows, ceil(V / 32)], laid out as in pack_bitmask.
    Unpack it to a bool [rows, V] (shift each word right by 0..31, & 1; the bits past V are
    padding) and fill where it is False: softmax then gives those tokens probability 0.
    """
    raise NotImplementedError(
        "apply_mask: bits = (bitmask[..., None] >> arange(32)) & 1, flatten to [rows, 32 * words], cut to V, masked_fill(~allowed, -inf). Engine: apply_token_bitmask_reference in structured_output/utils.py"
    )


def masks_for_drafts(
    text: str, drafts: list[int], vocab: list[str], pattern: str, eos_token_id: int
) -> list[list[int]]:
    """The k + 1 mask rows of a request that verifies k = len(drafts) draft tokens after `text`.

    Engine: StructuredOutputManager.grammar_bitmask in structured_output/__init__.py. Row j is
    allowed_tokens after text + drafts[0..j-1], so walk forward through the drafts. Once a draft
    is not in its row's allowed set, or is EOS (the grammar has ended), every later row allows
    every token (list(range(len(vocab)))): the rejection sampler never reaches those positions,
    or the structure is complete. The engine then rolls its grammar back; your text is a copy.
    """
    raise NotImplementedError(
        "masks_for_drafts: row j = allowed_tokens(text + drafts[:j]); after a refused draft or EOS, rows allow everything. Engine: StructuredOutputManager.grammar_bitmask"
    )


def required_tool_schema(tools: list[dict[str, Any]]) -> dict[str, Any]:
    """The JSON schema that tool_choice="required" constrains the output to.

    Engine: the server's chat path (vLLM: get_json_schema_from_tools in vllm/tool_parsers/utils.py).
    `tools` are OpenAI tools: {"type": "function", "function": {"name", "parameters", ...}}.
    The output must be a JSON array with at least one item; each item is an object that matches
    one of the tools (anyOf): {"properties": {"name": {"type": "string", "enum": [name]},
    "parameters": <the tool's parameters schema>}, "required": ["name", "parameters"]}.
    A tool without parameters takes {"type": "object", "properties": {}}.
    """
    raise NotImplementedError(
        'required_tool_schema: {"type": "array", "minItems": 1, "items": {"type": "object", "anyOf": [one schema per tool]}}. vLLM: get_json_schema_from_tools in vllm/tool_parsers/utils.py'
    )
