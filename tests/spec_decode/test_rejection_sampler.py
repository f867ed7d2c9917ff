"""The rejection sampler: hand-worked cases, and exactness by a chi-square test.

Exactness is the whole promise of speculative decoding: whatever the drafts, every emitted token
is distributed as the target's own (processed) distribution. The chi-square test draws many
first tokens through the sampler and compares their histogram with that distribution; a
deliberately broken sampler (one that forgets to take the draft's share out of the residual) must
fail the same test, or the test could not tell a wrong sampler from a right one.
"""

from __future__ import annotations

import pytest
import torch

from vllm_mini.model_executor.layers.rejection_sampler import RejectionSampler
from vllm_mini.model_executor.sampling_metadata import SamplingMetadata
from vllm_mini.sampling_params import SamplingParams

VOCAB = 6
# Chi-square critical values at significance 0.001, by degrees of freedom (vocab - 1).
CHI2_CRIT_0_001 = {3: 16.266, 4: 18.467, 5: 20.515}


def metadata(params: list[SamplingParams], generators=None) -> SamplingMetadata:
    n = len(params)
    return SamplingMetadata.from_params(
        params, [[1, 2]] * n, [[] for _ in range(n)], generators or {}, VOCAB, torch.device("cpu")
    )


def rows(*argmaxes: int) -> torch.Tensor:
    """Logits whose argmax per row is the given token."""
    logits = torch.zeros(len(argmaxes), VOCAB)
    for i, t in enumerate(argmaxes):
        logits[i, t] = 5.0
    return logits


def test_greedy_accepts_the_matching_prefix_then_emits_the_targets_token():
    sampler = RejectionSampler()
    greedy = SamplingParams(temperature=0.0)
    # Target argmax after the real token: 5, then 3, then 2 (the bonus position).
    out = sampler(rows(5, 3, 2), [[5, 4]], metadata([greedy]))
    assert out.token_ids == [[5, 3]]  # draft 5 accepted, draft 4 rejected -> target's 3
    out = sampler(rows(5, 3, 2), [[5, 3]], metadata([greedy]))
    assert out.token_ids == [[5, 3, 2]]  # both accepted, plus the bonus token
    out = sampler(rows(1, 3, 2), [[5, 3]], metadata([greedy]))
    assert out.token_ids == [[1]]  # the first draft is already wrong
    # Two requests in one batch, one without drafts.
    out = sampler(rows(4, 0, 1), [[4], []], metadata([greedy, greedy]))
    assert out.token_ids == [[4, 0], [1]]


def test_random_certain_drafts_accept_and_impossible_drafts_reject():
    sampler = RejectionSampler()
    one_hot = torch.full((3, VOCAB), float("-inf"))
    one_hot[0, 2] = one_hot[1, 4] = one_hot[2, 1] = 0.0  # p puts all mass on 2, then 4, then 1
    params = SamplingParams(temperature=1.0, seed=0)
    assert sampler(one_hot.clone(), [[2, 4]], metadata([params])).token_ids == [[2, 4, 1]]
    # A draft the target gives probability 0 is always rejected; the replacement comes from
    # the residual, which here is all of p's mass on token 2.
    assert sampler(one_hot.clone(), [[3, 4]], metadata([params])).token_ids == [[2]]


def chi_square(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs * counts.sum()
    keep = expected > 0
    assert counts[~keep].sum() == 0, "sampled a token of probability 0"
    return float(((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum())


def first_token_histogram(sampler, logits_row, draft, params, num, draft_probs=None):
    logits = logits_row.repeat(num * 2, 1)  # each request: its real position and one draft
    md = metadata([params] * num)
    if draft_probs is None:  # an n-gram draft: certain, q is one-hot on it
        drafts, q = [[draft]] * num, None
    else:  # a draft model's token is a sample of its q: the theorem needs d ~ q
        drafts = [[int(t)] for t in torch.multinomial(draft_probs, num, replacement=True)]
        q = [draft_probs.unsqueeze(0)] * num
    out = sampler(logits, drafts, md, q)
    first = torch.tensor([tokens[0] for tokens in out.token_ids])
    return torch.bincount(first, minlength=VOCAB).float()


def target_probs(logits_row: torch.Tensor, temperature: float, top_k: int) -> torch.Tensor:
    scaled = logits_row / temperature
    if top_k:
        kth = scaled.topk(top_k).values[-1]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    return scaled.softmax(-1)


class ForgetsTheResidual(RejectionSampler):
    """Broken on purpose: on rejection it resamples from p, so the draft wins twice."""

    @staticmethod
    def _verify_random(drafts, probs, draft_probs, generator):
        u = float(torch.rand(1, generator=generator))
        p, q = (
            float(probs[0, drafts[0]]),
            1.0 if draft_probs is None else float(draft_probs[0, drafts[0]]),
        )
        if u < min(1.0, p / q):
            return [drafts[0]]
        return [int(torch.multinomial(probs[0], 1, generator=generator))]


LOGITS = torch.tensor([1.2, 0.3, -0.5, 0.8, 0.0, -1.0])


@pytest.mark.parametrize(
    ("draft", "temperature", "top_k", "with_q"),
    [(0, 1.0, 0, False), (3, 0.7, 4, False), (1, 1.0, 0, True), (4, 1.3, 5, True)],
)
def test_emitted_tokens_follow_the_target_distribution(draft, temperature, top_k, with_q):
    torch.manual_seed(0)
    params = SamplingParams(temperature=temperature, top_k=top_k)
    probs = target_probs(LOGITS, temperature, top_k)
    q = torch.tensor([0.1, 0.3, 0.05, 0.25, 0.2, 0.1]) if with_q else None
    num = 20000
    counts = first_token_histogram(RejectionSampler(), LOGITS, draft, params, num, q)
    df = int((probs > 0).sum()) - 1
    assert chi_square(counts, probs) < CHI2_CRIT_0_001[df]
    broken = first_token_histogram(ForgetsTheResidual(), LOGITS, draft, params, num, q)
    assert chi_square(broken, probs) > CHI2_CRIT_0_001[df]


def test_seeded_requests_repeat_and_logprobs_cover_every_emitted_token():
    logits = torch.randn(3, VOCAB, generator=torch.Generator().manual_seed(1))
    params = SamplingParams(temperature=1.0, seed=7, logprobs=2)

    def run():
        gen = {0: torch.Generator().manual_seed(7)}
        return RejectionSampler()(logits.clone(), [[1, 2]], metadata([params], gen))

    first, second = run(), run()
    assert first.token_ids == second.token_ids
    tokens = first.token_ids[0]
    lp = first.logprobs_tensors
    assert lp.logprob_token_ids.shape == (len(tokens), 3)
    assert lp.logprob_token_ids[:, 0].tolist() == tokens
    expected = logits.log_softmax(-1)[torch.arange(len(tokens)), torch.tensor(tokens)]
    torch.testing.assert_close(lp.logprobs[:, 0], expected)
