"""The two interfaces every grammar library is wrapped in: a backend and a grammar.

Stage 13. Mirrors vllm/v1/structured_output/backend_types.py. A *backend* (xgrammar, guidance)
compiles a constraint once into an immutable automaton over the tokenizer's vocabulary (the
expensive part, cached and shared); a *grammar* is one request's cursor into it: it accepts the
tokens the request emits, says which tokens may come next as a bitmask, and can step back (for
speculative drafts that were checked but not kept). Next: backend_xgrammar.py.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod

import torch


class StructuredOutputOptions(enum.Enum):
    """The constraint kinds, one per StructuredOutputsParams field."""

    JSON = "json"
    JSON_OBJECT = "json_object"
    REGEX = "regex"
    GRAMMAR = "grammar"
    CHOICE = "choice"
    STRUCTURAL_TAG = "structural_tag"


# (kind, its specification as text, compact whitespace): two requests with equal keys share one
# compiled grammar.
StructuredOutputKey = tuple[StructuredOutputOptions, str, bool]


class StructuredOutputGrammar(ABC):
    """One request's position in a compiled grammar."""

    @abstractmethod
    def accept_tokens(self, request_id: str, tokens: list[int]) -> bool:
        """Advance over `tokens`; False (and no advance past the bad one) if one is not allowed."""

    @abstractmethod
    def validate_tokens(self, tokens: list[int]) -> list[int]:
        """The longest prefix of `tokens` the grammar would accept; the state does not move."""

    @abstractmethod
    def rollback(self, num_tokens: int) -> None:
        """Undo the last `num_tokens` accepted tokens."""

    @abstractmethod
    def fill_bitmask(self, bitmask: torch.Tensor, index: int) -> None:
        """Row `index` of `bitmask` := the tokens allowed next (bit t % 32 of word t // 32)."""

    @abstractmethod
    def is_terminated(self) -> bool:
        """True once the grammar has accepted a stop token: the structure is complete."""


class StructuredOutputBackend(ABC):
    """A grammar library bound to one tokenizer's vocabulary."""

    vocab_size: int

    @abstractmethod
    def compile(self, key: StructuredOutputKey) -> object:
        """The compiled form of a constraint (slow; the manager caches it by key)."""

    @abstractmethod
    def new_grammar(self, compiled: object) -> StructuredOutputGrammar:
        """A fresh cursor at the start of a compiled constraint (cheap; one per request). Both
        libraries keep the history that `rollback` needs without being told how much."""

    def allocate_token_bitmask(self, num_rows: int) -> torch.Tensor:
        """int32 [num_rows, ceil(vocab_size / 32)]: 32 tokens per word, all allowed (-1)."""
        return torch.full((num_rows, -(-self.vocab_size // 32)), -1, dtype=torch.int32)
