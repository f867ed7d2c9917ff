"""The guidance backend: llguidance's lazy lexer + Earley parser, masks computed on demand.

Stage 13. Mirrors vllm/v1/structured_output/backend_guidance.py. Where xgrammar precomputes token
classes per automaton state, llguidance walks a trie of the vocabulary against its lexer at each
step (a few tens of microseconds here) and needs almost no compile time, which suits schemas that
change with every request. Grammars are Lark (GBNF is converted); JSON schemas and regexes are
translated by llguidance itself. Next: request.py.
"""

from __future__ import annotations

import llguidance
import llguidance.hf
import llguidance.torch
import torch
from transformers import PreTrainedTokenizerBase

from vllm_mini.sampling_params import StructuredOutputsParams
from vllm_mini.structured_output.backend_types import (
    StructuredOutputBackend,
    StructuredOutputGrammar,
    StructuredOutputKey,
    StructuredOutputOptions,
)
from vllm_mini.structured_output.utils import get_structured_output_key


def guidance_grammar_spec(key: StructuredOutputKey) -> str:
    """The llguidance grammar text for a constraint."""
    kind, spec, compact = key
    if kind in (StructuredOutputOptions.JSON, StructuredOutputOptions.JSON_OBJECT):
        return llguidance.LLMatcher.grammar_from_json_schema(
            spec, defaults={"whitespace_flexible": not compact}
        )
    if kind is StructuredOutputOptions.REGEX:
        return llguidance.grammar_from("regex", spec)
    if kind is StructuredOutputOptions.CHOICE:
        return llguidance.grammar_from("choice", spec)
    if kind is StructuredOutputOptions.GRAMMAR:
        return llguidance.grammar_from("grammar", spec)  # Lark, or GBNF converted to Lark
    raise ValueError("structured_outputs.structural_tag needs the xgrammar backend")


class GuidanceBackend(StructuredOutputBackend):
    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, vocab_size: int, eos_token_id: int
    ) -> None:
        self.vocab_size = vocab_size
        self.ll_tokenizer = llguidance.hf.from_tokenizer(
            tokenizer, n_vocab=vocab_size, eos_token=eos_token_id
        )

    def compile(self, key: StructuredOutputKey) -> str:
        grammar = guidance_grammar_spec(key)
        ok, error = _validate(grammar, self.ll_tokenizer)
        if not ok:
            raise ValueError(f"structured_outputs.{key[0].value} is invalid for guidance: {error}")
        return grammar

    def new_grammar(self, compiled: object) -> GuidanceGrammar:
        matcher = llguidance.LLMatcher(self.ll_tokenizer, compiled)
        return GuidanceGrammar(matcher, self.ll_tokenizer.eos_token)


class GuidanceGrammar(StructuredOutputGrammar):
    def __init__(self, matcher: llguidance.LLMatcher, eos_token_id: int) -> None:
        self.matcher = matcher
        self.eos_token_id = eos_token_id
        # llguidance's is_stopped() is already true when the text is a complete match and only
        # EOS may follow; the structure is over only once EOS itself was accepted.
        self.num_accepted = 0
        self.eos_index: int | None = None  # position of the accepted EOS, if any

    def accept_tokens(self, request_id: str, tokens: list[int]) -> bool:
        for token in tokens:
            if not self.matcher.consume_token(token):
                return False
            if token == self.eos_token_id and self.eos_index is None:
                self.eos_index = self.num_accepted
            self.num_accepted += 1
        return True

    def validate_tokens(self, tokens: list[int]) -> list[int]:
        return tokens[: self.matcher.validate_tokens(tokens)]

    def rollback(self, num_tokens: int) -> None:
        self.matcher.rollback(num_tokens)
        self.num_accepted -= num_tokens
        if self.eos_index is not None and self.eos_index >= self.num_accepted:
            self.eos_index = None

    def fill_bitmask(self, bitmask: torch.Tensor, index: int) -> None:
        llguidance.torch.fill_next_token_bitmask(self.matcher, bitmask, index)

    def is_terminated(self) -> bool:
        return self.eos_index is not None


def _validate(grammar: str, tokenizer: object | None) -> tuple[bool, str]:
    error = (llguidance.LLMatcher.validate_grammar(grammar, tokenizer) or "").strip()
    return not error, error.splitlines()[0] if error else ""


def validate_guidance_params(params: StructuredOutputsParams) -> None:
    """Translate and check the constraint without a tokenizer (the front end has no backend)."""
    if params.whitespace_pattern is not None:
        raise ValueError(
            "structured_outputs.whitespace_pattern is not supported by guidance; "
            "use disable_any_whitespace"
        )
    key = get_structured_output_key(params)
    try:
        grammar = guidance_grammar_spec(key)
    except (ValueError, RuntimeError) as e:
        raise ValueError(f"structured_outputs.{params.kind} is invalid for guidance: {e}") from e
    ok, error = _validate(grammar, None)
    if not ok:
        raise ValueError(f"structured_outputs.{params.kind} is invalid for guidance: {error}")
