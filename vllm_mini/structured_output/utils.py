"""From a request's constraint to a compile key, and from packed bitmasks to masked logits.

Stage 13. Mirrors vllm/v1/structured_output/utils.py. A token bitmask packs the allowed set of
a vocabulary of V tokens into ceil(V / 32) int32 words: token t is allowed when bit t % 32 of word
t // 32 is set. 49152 tokens fit in 6 KiB, small enough to fill on the CPU for every
constrained request every step. `apply_token_bitmask_reference` is the readable version;
`apply_grammar_bitmask` uses xgrammar's C++ kernel and is checked against it in the tests.
Next: backend_types.py.
"""

from __future__ import annotations

import json
from concurrent.futures import Future
from typing import Any

import torch

from vllm_mini.core.sched.output import GrammarOutput
from vllm_mini.sampling_params import StructuredOutputsParams
from vllm_mini.structured_output.backend_types import StructuredOutputKey, StructuredOutputOptions


def get_structured_output_key(
    params: StructuredOutputsParams,
    compact_whitespace: bool = False,
    forbid_additional_properties: bool = False,
) -> StructuredOutputKey:
    """(kind, specification text, compact whitespace): the cache key of a compiled grammar.
    The engine-wide options (StructuredOutputsConfig) add to the request's own."""
    compact = compact_whitespace or params.disable_any_whitespace
    kind = StructuredOutputOptions(params.kind)
    if kind is StructuredOutputOptions.JSON:
        schema = params.json_schema
        if params.disable_additional_properties or forbid_additional_properties:
            schema = _forbid_additional_properties(schema)
        spec = json.dumps(schema)  # key order is property order: do not sort
    elif kind is StructuredOutputOptions.JSON_OBJECT:
        spec = '{"type": "object"}'
    elif kind is StructuredOutputOptions.CHOICE:
        spec = json.dumps(params.choice)
    else:
        spec = getattr(params, kind.value)
    return kind, spec, compact


def choice_as_grammar(choices: list[str]) -> str:
    """`["yes", "no"]` -> `root ::= "yes" | "no"` (JSON string escapes are valid in EBNF)."""
    return "root ::= " + " | ".join(json.dumps(c) for c in choices)


def _forbid_additional_properties(schema: Any) -> Any:
    """Every object schema without `additionalProperties` gets `false` (vLLM's guidance option)."""
    if isinstance(schema, list):
        return [_forbid_additional_properties(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _forbid_additional_properties(v) for k, v in schema.items()}
    if out.get("type") == "object" or "properties" in out:
        out.setdefault("additionalProperties", False)
    return out


def unpack_bitmask(bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """bool [rows, vocab_size] from int32 [rows, words]: bit j of word w is token 32 * w + j."""
    shifts = torch.arange(32, dtype=torch.int32, device=bitmask.device)
    bits = (bitmask.unsqueeze(-1) >> shifts) & 1  # [rows, words, 32]
    return bits.flatten(1)[:, :vocab_size].bool()


def apply_token_bitmask_reference(logits: torch.Tensor, bitmask: torch.Tensor) -> None:
    """logits [rows, V] in place: a forbidden token gets -inf, so softmax gives it probability 0."""
    allowed = unpack_bitmask(bitmask, logits.shape[-1])
    logits.masked_fill_(~allowed, float("-inf"))


def apply_grammar_bitmask(
    logits: torch.Tensor,
    logits_rows: dict[str, tuple[int, int]],
    grammar_output: Future | GrammarOutput,
    use_kernel: bool = True,
) -> None:
    """Mask the constrained requests' rows of `logits` [rows, V] in place.

    `logits_rows[req_id] = (first row, number of rows)`: a request verifying k drafts owns
    1 + k consecutive rows and `grammar_output` holds as many masks for it, in the same order.
    """
    if isinstance(grammar_output, Future):
        grammar_output = grammar_output.result()  # filled beside the forward pass: wait here
    bitmask = torch.from_numpy(grammar_output.grammar_bitmask)
    aligned = torch.full((logits.shape[0], bitmask.shape[1]), -1, dtype=torch.int32)
    rows: list[int] = []
    cursor = 0
    for req_id, count in zip(
        grammar_output.structured_output_request_ids, grammar_output.num_bitmask_rows
    ):
        first, num = logits_rows.get(req_id, (-1, 0))
        if num == count:  # a request that does not sample this step has no logits rows
            aligned[first : first + num] = bitmask[cursor : cursor + count]
            rows.extend(range(first, first + num))
        cursor += count
    if not rows:
        return
    aligned = aligned.to(logits.device)
    if use_kernel and logits.device.type == "cpu" and logits.dtype == torch.float32:
        import xgrammar as xgr  # the C++ kernel; imported here so the reference needs nothing

        xgr.apply_token_bitmask_inplace(logits, aligned, indices=rows)
    else:
        index = torch.tensor(rows, device=logits.device)
        sub = logits[index]
        apply_token_bitmask_reference(sub, aligned[index])
        logits[index] = sub
