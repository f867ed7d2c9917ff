"""The batched sampler against HF transformers' logits processors on the same logits."""

from __future__ import annotations

import pytest
import torch
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from vllm_mini.model_executor.layers.sampler import (
    Sampler,
    apply_penalties,
    apply_top_k_top_p_min_p,
)
from vllm_mini.model_executor.sampling_metadata import SamplingMetadata
from vllm_mini.sampling_params import SamplingParams

V = 50


def md(params, prompts=None, outputs=None, generators=None):
    n = len(params)
    return SamplingMetadata.from_params(
        params,
        prompts or [[1, 2, 3]] * n,
        outputs or [[]] * n,
        generators or {},
        V,
        torch.device("cpu"),
    )


def logits(n=4, seed=0):
    return torch.randn(n, V, generator=torch.Generator().manual_seed(seed)) * 3


def test_top_k_1_equals_greedy():
    x = logits()
    greedy = Sampler()(x.clone(), md([SamplingParams(temperature=0)] * 4)).sampled_token_ids
    top1 = Sampler()(
        x.clone(), md([SamplingParams(temperature=1.0, top_k=1)] * 4)
    ).sampled_token_ids
    assert torch.equal(greedy, x.argmax(-1)) and torch.equal(top1, greedy)


def test_seeds_reproduce_and_differ_regardless_of_batch():
    x = logits(1).repeat(3, 1)
    p = SamplingParams(temperature=1.0, seed=123)

    def draw(rows_params, seeds_rows):
        gens = {r: torch.Generator().manual_seed(s) for r, s in seeds_rows.items()}
        out = []
        for _ in range(20):
            out.append(
                Sampler()(
                    x[: len(rows_params)].clone(), md(rows_params, generators=gens)
                ).sampled_token_ids
            )
        return torch.stack(out)  # [20, B]

    alone = draw([p], {0: 123})[:, 0]
    in_batch = draw([SamplingParams(temperature=1.0), p, SamplingParams(temperature=0)], {1: 123})[
        :, 1
    ]
    other_seed = draw([p], {0: 124})[:, 0]
    assert torch.equal(alone, in_batch)
    assert not torch.equal(alone, other_seed)


def test_repetition_penalty_matches_hf():
    x = logits()
    prompts = [[1, 2, 3], [4, 5], [6], [7, 8, 9, 10]]
    outputs = [[11, 12], [2], [], [7, 13]]
    params = [SamplingParams(repetition_penalty=r) for r in (1.3, 0.8, 2.0, 1.1)]
    got = apply_penalties(x.clone(), md(params, prompts, outputs))
    for i, p in enumerate(params):
        ids = torch.tensor([prompts[i] + outputs[i]])
        ref = RepetitionPenaltyLogitsProcessor(p.repetition_penalty)(ids, x[i : i + 1].clone())
        torch.testing.assert_close(got[i], ref[0])


def test_presence_and_frequency_penalties_follow_openai_formula():
    x = logits(2)
    outputs = [[5, 5, 5, 9], [1]]
    params = [
        SamplingParams(presence_penalty=0.5, frequency_penalty=0.25),
        SamplingParams(presence_penalty=-1.0),
    ]
    got = apply_penalties(x.clone(), md(params, [[30], [31]], outputs))
    for i, p in enumerate(params):
        ref = x[i].clone()
        counts = torch.bincount(torch.tensor(outputs[i]), minlength=V).float()
        ref -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).float()
        torch.testing.assert_close(got[i], ref)


@pytest.mark.parametrize(
    ("kwargs", "hf"),
    [
        ({"top_k": 5}, TopKLogitsWarper(5)),
        ({"top_p": 0.7}, TopPLogitsWarper(0.7)),
        ({"min_p": 0.1}, MinPLogitsWarper(0.1)),
    ],
)
def test_filters_keep_the_same_tokens_as_hf(kwargs, hf):
    x = logits(3)
    got = apply_top_k_top_p_min_p(x.clone(), md([SamplingParams(**kwargs)] * 3))
    ref = hf(torch.zeros(3, 1, dtype=torch.long), x.clone())
    assert torch.equal(torch.isfinite(got), torch.isfinite(ref))


def test_temperature_scaling_matches_hf():
    x = logits(2)
    scaled = x / 0.7
    ref = TemperatureLogitsWarper(0.7)(torch.zeros(2, 1, dtype=torch.long), x.clone())
    torch.testing.assert_close(scaled, ref)


def test_min_tokens_masks_stop_tokens_until_reached():
    x = torch.zeros(2, V)
    x[:, 2] = 10.0  # EOS would win
    p = SamplingParams(temperature=0, min_tokens=3, stop_token_ids=[7])
    p.update_from_generation_config(2)
    x[:, 7] = 9.0
    out = Sampler()(x.clone(), md([p, p], outputs=[[4], [4, 4, 4]])).sampled_token_ids
    assert out[0].item() not in (2, 7)  # 1 output token < min_tokens: both stop ids masked
    assert out[1].item() == 2  # min_tokens reached: EOS allowed


def test_logprobs_are_raw_log_softmax_with_ranks():
    x = logits(2)
    params = [SamplingParams(temperature=0, logprobs=3)] * 2
    out = Sampler()(x.clone(), md(params))
    ids, lps, ranks = out.logprobs_tensors.tolists()
    ref = torch.log_softmax(x, -1)
    for i in range(2):
        assert ids[i][0] == out.sampled_token_ids[i].item() and ranks[i] == 1
        assert ids[i][1:] == ref[i].topk(3).indices.tolist()
        torch.testing.assert_close(torch.tensor(lps[i]), ref[i][ids[i]])


def test_sampling_follows_the_softmax_distribution():
    x = torch.tensor([[2.0, 1.0, 0.0, -1.0] + [-1e9] * (V - 4)])
    gen = {0: torch.Generator().manual_seed(0)}
    counts = torch.zeros(V)
    meta = md([SamplingParams(temperature=1.0, seed=0)], generators=gen)
    for _ in range(4000):
        counts[Sampler()(x.clone(), meta).sampled_token_ids[0]] += 1
    expected = torch.softmax(x[0], -1)[:4]
    assert (counts[:4] / 4000 - expected).abs().max() < 0.03
    assert counts[4:].sum() == 0
