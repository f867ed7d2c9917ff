"""How many draft tokens the target accepted: overall, on average per draft, per position.

Stage 11. Mirrors vllm/v1/spec_decode/metrics.py (SpecDecodingStats). The scheduler records one
observation per request per step that verified drafts; the engine logs the figures, `/metrics`
exports them as vLLM's counters, and benchmarks/spec_decode.py prints them beside the speed-up.
- acceptance rate = accepted / proposed draft tokens;
- mean acceptance length = 1 + accepted / drafts: the tokens one verifying step yields on
  average (the 1 is the token the target samples itself after the last accepted draft);
- per-position acceptance: position i is reached only if drafts 0..i-1 were accepted, so the
  rates fall with i; where they fall to nothing, a smaller k would waste less compute.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SpecDecodingStats:
    num_spec_tokens: int  # k: the most drafts one request verifies per step
    num_drafts: int = 0  # (request, step) pairs that verified at least one draft token
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0
    num_accepted_tokens_per_pos: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.num_accepted_tokens_per_pos:
            self.num_accepted_tokens_per_pos = [0] * self.num_spec_tokens

    def observe_draft(self, num_draft_tokens: int, num_accepted_tokens: int) -> None:
        self.num_drafts += 1
        self.num_draft_tokens += num_draft_tokens
        self.num_accepted_tokens += num_accepted_tokens
        for pos in range(num_accepted_tokens):
            self.num_accepted_tokens_per_pos[pos] += 1

    @property
    def acceptance_rate(self) -> float:
        return self.num_accepted_tokens / self.num_draft_tokens if self.num_draft_tokens else 0.0

    @property
    def mean_acceptance_length(self) -> float:
        return 1.0 + self.num_accepted_tokens / self.num_drafts if self.num_drafts else 0.0

    @property
    def per_position_acceptance(self) -> list[float]:
        if not self.num_drafts:
            return [0.0] * self.num_spec_tokens
        return [n / self.num_drafts for n in self.num_accepted_tokens_per_pos]

    def summary(self) -> str:
        per_pos = ", ".join(f"{r:.2f}" for r in self.per_position_acceptance)
        return (
            f"spec decode: {self.num_drafts} drafts, {self.num_draft_tokens} draft tokens, "
            f"{self.num_accepted_tokens} accepted (rate {self.acceptance_rate:.2f}, mean "
            f"acceptance length {self.mean_acceptance_length:.2f}, per position [{per_pos}])"
        )
