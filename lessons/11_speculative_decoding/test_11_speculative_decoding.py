"""Lesson 11: your proposer and your verification must match the engine's, and stay exact.

Runs `solutions.py` by default; `LESSON_IMPL=exercises` checks your `exercises.py`:
propose against the engine's propose_ngram on hand cases and random sequences, greedy against
RejectionSampler._verify_greedy, residual against its definition, random_step against the
engine's accept decision for the same uniform draw, and exact: your accept/reject step sampled
20,000 times must emit tokens distributed as the target's p (a chi-square test that a step which
forgets the residual fails).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lessons._impl import load_impl
from vllm_mini.model_executor.layers.rejection_sampler import RejectionSampler
from vllm_mini.spec_decode.ngram_proposer import propose_ngram

impl = load_impl(__file__)

# A target p and a draft model's q over a vocabulary of 6; they disagree on purpose.
P = torch.tensor([0.35, 0.05, 0.10, 0.30, 0.15, 0.05])
Q = torch.tensor([0.10, 0.30, 0.05, 0.25, 0.20, 0.10])
CHI2_CRIT_DF5_0_001 = 20.515  # chi-square, 5 degrees of freedom, significance 0.001


def test_propose_hand_cases():
    # "3 4" occurred at positions 2-3; what followed it was 5 6 7.
    assert impl.propose([1, 2, 3, 4, 5, 6, 7, 3, 4], 2, 3, 3) == [5, 6, 7]
    # The longest n wins: "7 8 9" matches once, although "8 9" alone matches earlier.
    tokens = [8, 9, 1, 7, 8, 9, 2, 0, 7, 8, 9]
    assert impl.propose(tokens, 2, 3, 2) == [2, 0]
    # Among equally long matches, the earliest: "5 5" first occurs at 0, followed by 5 5 1.
    assert impl.propose([5, 5, 5, 5, 1, 5, 5], 2, 2, 3) == [5, 5, 1]
    # A match near the end gives fewer than k tokens; no match gives none.
    assert impl.propose([1, 2, 3, 1, 2], 2, 2, 5) == [3, 1, 2]
    assert impl.propose([1, 2, 3, 4], 1, 3, 4) == []
    assert impl.propose([7], 1, 3, 4) == []


@pytest.mark.parametrize(("min_n", "max_n", "k"), [(1, 1, 3), (2, 4, 4), (1, 5, 2), (3, 3, 5)])
def test_propose_matches_the_engine(min_n, max_n, k):
    rng = np.random.default_rng(min_n * 10 + max_n)
    for _ in range(300):
        # A small vocabulary and a repeated chunk, so that matches of every length occur.
        tokens = rng.integers(0, 5, size=int(rng.integers(1, 40)))
        if rng.random() < 0.5:
            tokens = np.concatenate([tokens, tokens[: int(rng.integers(1, 8))]])
        mine = impl.propose(tokens.tolist(), min_n, max_n, k)
        assert mine == propose_ngram(tokens, min_n, max_n, k), tokens.tolist()


def test_greedy_matches_the_engine():
    assert impl.verify_greedy([5, 4], [5, 3, 2]) == [5, 3]  # second draft wrong -> target's 3
    assert impl.verify_greedy([5, 3], [5, 3, 2]) == [5, 3, 2]  # all right, plus the bonus
    assert impl.verify_greedy([1, 3], [5, 3, 2]) == [5]  # the first draft is already wrong
    assert impl.verify_greedy([], [7]) == [7]  # no drafts: an ordinary decode step
    rng = np.random.default_rng(0)
    for _ in range(500):
        s = int(rng.integers(0, 6))
        drafts = rng.integers(0, 3, size=s).tolist()
        targets = rng.integers(0, 3, size=s + 1).tolist()
        mine = impl.verify_greedy(drafts, targets)
        assert mine == RejectionSampler._verify_greedy(drafts, targets), (drafts, targets)


def test_residual():
    r = impl.residual(P, Q)
    expected = torch.tensor([0.25, 0.0, 0.05, 0.05, 0.0, 0.0]) / 0.35
    torch.testing.assert_close(r, expected)
    # The two branches together rebuild p: min(p, q) from acceptance, the rest from r.
    overlap = torch.minimum(P, Q)
    torch.testing.assert_close(overlap + (1 - overlap.sum()) * r, P)
    # An n-gram draft: q one-hot on token 3. The residual is p without token 3, renormalized.
    one_hot = torch.nn.functional.one_hot(torch.tensor(3), 6).float()
    without_3 = P.clone()
    without_3[3] = 0.0
    torch.testing.assert_close(impl.residual(P, one_hot), without_3 / 0.7)
    torch.testing.assert_close(impl.residual(P, P), P)  # nothing left: fall back to p


def test_random_step_accepts_exactly_when_the_engine_does():
    """Same uniform draw, same decision: the engine draws u with torch.rand from the generator."""
    probs = torch.stack([P, P])  # row 0 verifies the draft, row 1 is the bonus position
    for seed in range(200):
        draft = seed % 6
        u = float(torch.rand(1, generator=torch.Generator().manual_seed(seed)))
        engine = RejectionSampler._verify_random(
            [draft], probs, Q[None], torch.Generator().manual_seed(seed)
        )
        accepted, token = impl.verify_random_step(P, Q, draft, u, torch.Generator())
        assert accepted == (len(engine) == 2), (seed, draft, u)
        if accepted:
            assert token == draft
        else:
            assert float(impl.residual(P, Q)[token]) > 0, "resampled a token the residual lacks"


def histogram_of_emitted(step, p, q, num=20_000, seed=0) -> torch.Tensor:
    """Run `step` num times with drafts sampled from q; count the emitted tokens."""
    g = torch.Generator().manual_seed(seed)
    drafts = torch.multinomial(q, num, replacement=True, generator=g).tolist()
    uniforms = torch.rand(num, generator=g).tolist()
    counts = torch.zeros_like(p)
    for d, u in zip(drafts, uniforms):
        counts[step(p, q, d, u, g)[1]] += 1
    return counts


def chi_square(counts: torch.Tensor, p: torch.Tensor) -> float:
    expected = p * counts.sum()
    keep = expected > 0
    assert counts[~keep].sum() == 0, "emitted a token the target gives probability 0"
    return float(((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum())


def forgets_the_residual(p, q, draft, u, generator):
    """Broken on purpose: on rejection it samples from p, so drafts are emitted too often."""
    if u < min(1.0, float(p[draft]) / float(q[draft])):
        return True, draft
    return False, int(torch.multinomial(p, 1, generator=generator))


def test_exact_the_emitted_tokens_follow_the_target_distribution():
    """The theorem, checked empirically: speculation must not change what is sampled."""
    counts = histogram_of_emitted(impl.verify_random_step, P, Q)
    assert chi_square(counts, P) < CHI2_CRIT_DF5_0_001, f"emitted {counts / counts.sum()}, p {P}"
    # The same test catches a step that samples from p after a rejection: it is sharp enough.
    broken = histogram_of_emitted(forgets_the_residual, P, Q)
    assert chi_square(broken, P) > CHI2_CRIT_DF5_0_001


def test_exact_with_a_certain_ngram_draft():
    one_hot = torch.nn.functional.one_hot(torch.tensor(0), 6).float()
    counts = histogram_of_emitted(impl.verify_random_step, P, one_hot, num=10_000, seed=1)
    assert chi_square(counts, P) < CHI2_CRIT_DF5_0_001


@pytest.mark.demo
@pytest.mark.slow
def test_demo_speculation_changes_nothing_and_saves_steps(capsys):
    demo = load_impl(__file__, "demo")
    row = demo.main(max_tokens=40, show_steps=3)
    out = capsys.readouterr().out
    assert "identical to plain greedy decoding: True" in out and row["identical"]
    # The paragraph is copied from the prompt: several tokens per step, far fewer steps.
    assert row["mean_acceptance_length"] > 2.0
    assert row["spec_steps"] < row["plain_steps"] * 0.7
