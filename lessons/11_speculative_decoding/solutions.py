"""Lesson 11 solutions: the proposer and the two verification rules, in plain Python and torch.

Written to be read next to the engine's versions (spec_decode/ngram_proposer.py, which scans
all windows at once with numpy, and model_executor/layers/rejection_sampler.py, which verifies
a whole batch). Try exercises.py first.
"""

from __future__ import annotations

import torch


def propose(tokens: list[int], min_n: int, max_n: int, k: int) -> list[int]:
    total = len(tokens)
    # n can be at most total - 1: the suffix needs an earlier occurrence that is not itself.
    for n in range(min(max_n, total - 1), min_n - 1, -1):
        suffix = tokens[total - n :]
        # Scan left to right, so the first hit is the earliest: the one with most tokens after it.
        for start in range(total - n):
            if tokens[start : start + n] == suffix:
                return tokens[start + n : start + n + k]
    return []


def verify_greedy(drafts: list[int], target_argmax: list[int]) -> list[int]:
    emitted = []
    for draft, target in zip(drafts, target_argmax):
        if draft != target:
            # The target's own choice is still a correct greedy token: the step never wastes it.
            return emitted + [target]
        emitted.append(draft)
    return emitted + [target_argmax[len(drafts)]]  # all accepted: the bonus token is free


def residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    r = (p - q).clamp(min=0.0)
    total = float(r.sum())
    if total <= 0.0:  # p == q: rejection is impossible, the fallback only guards rounding
        return p
    return r / total


def verify_random_step(
    p: torch.Tensor, q: torch.Tensor, draft: int, u: float, generator: torch.Generator
) -> tuple[bool, int]:
    # Accepting with min(1, p/q) emits d with probability q(d) * min(1, p(d)/q(d)) = min(p, q)(d).
    if u < min(1.0, float(p[draft]) / float(q[draft])):
        return True, draft
    # The rejection branch supplies the rest of p: max(p - q, 0), which sums to 1 - sum min(p, q).
    token = torch.multinomial(residual(p, q), 1, generator=generator)
    return False, int(token)
