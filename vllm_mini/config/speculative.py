"""SpeculativeConfig: who proposes draft tokens, and how many per step.

Stage 11. Mirrors vllm/config/speculative.py. Two proposers, as vLLM names them:
- "ngram" (prompt lookup): the last n tokens of a request are searched for earlier in its own
  prompt + output; the tokens that followed that earlier occurrence are the draft. No model,
  no memory, and free on text that repeats itself (code edits, summaries, quoting).
- "draft_model": a smaller model with the same vocabulary runs k steps ahead. `num_draft_layers`
  (our addition) builds the draft from the first layers of the target's own checkpoint
  ("self-speculation"), for models that have no smaller sibling.
Each engine step verifies up to `num_speculative_tokens` drafts in one forward pass of the
target (model_executor/layers/rejection_sampler.py). Next: spec_decode/ngram_proposer.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vllm_mini.config.utils import config_from_cli

METHODS = ("ngram", "draft_model")
# vLLM's defaults when neither bound is given ("arbitrarily chosen", its source says).
DEFAULT_PROMPT_LOOKUP = 5


@dataclass
class SpeculativeConfig:
    method: str = "ngram"
    num_speculative_tokens: int = 0
    prompt_lookup_min: int | None = None
    prompt_lookup_max: int | None = None
    model: str | None = None  # the draft checkpoint (draft_model)
    num_draft_layers: int | None = None  # draft = the target's first N layers
    # vLLM's knob: no drafts while this many requests or more share a step. Verification is
    # nearly free only while a step is bound by reading the weights; a big batch already
    # reuses every weight it reads, and extra query tokens then cost real compute.
    disable_by_batch_size: int | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(
                f"speculative_config.method must be one of {list(METHODS)}, got {self.method!r}"
            )
        k = self.num_speculative_tokens
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(
                f"speculative_config.num_speculative_tokens must be an int >= 1, got {k!r}"
            )
        b = self.disable_by_batch_size
        if b is not None and (not isinstance(b, int) or b < 1):
            raise ValueError(f"speculative_config.disable_by_batch_size must be >= 1, got {b!r}")
        if self.method == "ngram":
            lo, hi = self.prompt_lookup_min, self.prompt_lookup_max
            if lo is None and hi is None:
                lo = hi = DEFAULT_PROMPT_LOOKUP
            lo = hi if lo is None else lo
            hi = lo if hi is None else hi
            for name, value in (("prompt_lookup_min", lo), ("prompt_lookup_max", hi)):
                if not isinstance(value, int) or value < 1:
                    raise ValueError(
                        f"speculative_config.{name} must be an int >= 1, got {value!r}"
                    )
            if lo > hi:
                raise ValueError(
                    f"speculative_config.prompt_lookup_min ({lo}) must be <= prompt_lookup_max "
                    f"({hi})"
                )
            self.prompt_lookup_min, self.prompt_lookup_max = lo, hi
        else:
            if self.model is None and self.num_draft_layers is None:
                raise ValueError(
                    "speculative_config for method 'draft_model' needs 'model' (a draft "
                    "checkpoint) or 'num_draft_layers' (the target's first N layers)"
                )
            n = self.num_draft_layers
            if n is not None and (not isinstance(n, int) or n < 1):
                raise ValueError(f"speculative_config.num_draft_layers must be >= 1, got {n!r}")

    @classmethod
    def from_cli(cls, value: SpeculativeConfig | dict | str | None) -> SpeculativeConfig | None:
        """`LLM(speculative_config={...})` or `--speculative-config '{...}'` (JSON)."""
        if value is None or isinstance(value, SpeculativeConfig):
            return value
        return config_from_cli(cls, value, "speculative_config")

    def verify_with_models(self, target: Any, draft: Any | None) -> None:
        """A draft must speak the target's vocabulary: its token ids are the target's inputs."""
        if draft is not None and draft.vocab_size != target.vocab_size:
            raise ValueError(
                f"the draft model's vocabulary ({draft.vocab_size} tokens) differs from the "
                f"target's ({target.vocab_size}); speculative decoding needs the same tokenizer"
            )
