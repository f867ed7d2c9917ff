"""Lesson 11 exercises: propose draft tokens, then verify them without changing the output.

Fill in each function, then run:  LESSON_IMPL=exercises .venv/bin/pytest lessons/11_speculative_decoding
One at a time with -k: propose | greedy | residual | random_step | exact. The tests compare
your answers with the engine's propose_ngram and RejectionSampler, and sample your accept/reject
step thousands of times to check that what it emits is distributed exactly as the target's p.
"""

from __future__ import annotations

import torch


def propose(tokens: list[int], min_n: int, max_n: int, k: int) -> list[int]:
    """Prompt lookup: up to k draft tokens that continue `tokens` (prompt + output so far).

    Engine: propose_ngram in vllm_mini/spec_decode/ngram_proposer.py. For n from max_n down to
    min_n: take the last n tokens and look for them earlier in `tokens` (any window that is not
    the suffix itself). The first n with a match wins (a longer match is a better predictor);
    among its matches take the EARLIEST, since it has the most tokens after it. Return the k
    tokens that follow that match (fewer if the sequence ends first), or [] if no n matches.
    """
    raise NotImplementedError(
        "propose: for n = max_n..min_n, find the earliest earlier occurrence of tokens[-n:] and return the k tokens after it. Engine: propose_ngram in spec_decode/ngram_proposer.py"
    )


def verify_greedy(drafts: list[int], target_argmax: list[int]) -> list[int]:
    """The tokens one greedy verifying step emits.

    Engine: RejectionSampler._verify_greedy in model_executor/layers/rejection_sampler.py.
    target_argmax has len(drafts) + 1 entries: target_argmax[j] is the target's choice after the
    real last token and drafts[:j]. Accept drafts while they equal the target's choice; at the
    first mismatch emit the target's token instead and stop; if all drafts match, emit them and
    the target's last choice (the "bonus" token). So 1 to len(drafts) + 1 tokens come out.
    """
    raise NotImplementedError(
        "verify_greedy: accept drafts[j] while it equals target_argmax[j]; then append the target's own token. Engine: RejectionSampler._verify_greedy"
    )


def residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """The distribution to sample from after a rejection: max(p - q, 0), renormalized. [vocab]

    Engine: the rejection branch of RejectionSampler._verify_random. It holds exactly the mass p
    has and the draft under-proposed. If p == q (nothing left, up to rounding), return p itself:
    a rejection then has probability 0, so any answer keeps the output exact, and p is safe.
    """
    raise NotImplementedError(
        "residual: (p - q).clamp(min=0), divided by its sum; p if the sum is 0. Engine: RejectionSampler._verify_random"
    )


def verify_random_step(
    p: torch.Tensor, q: torch.Tensor, draft: int, u: float, generator: torch.Generator
) -> tuple[bool, int]:
    """One accept/reject decision for one draft token: (accepted, emitted token).

    Engine: RejectionSampler._verify_random (Leviathan et al. 2023, section 2.3).
    p, q: [vocab] the target's and the draft's distributions; `draft` was sampled from q
    (an n-gram draft is certain: q is one-hot on it); u ~ Uniform(0, 1).
    Accept if u < min(1, p[draft] / q[draft]): return (True, draft). Otherwise return
    (False, a token sampled from residual(p, q) with `generator`).
    """
    raise NotImplementedError(
        "verify_random_step: accept when u < min(1, p[d] / q[d]); else sample torch.multinomial(residual(p, q), 1, generator=generator). Engine: RejectionSampler._verify_random"
    )
