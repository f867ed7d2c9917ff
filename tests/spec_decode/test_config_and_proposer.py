"""SpeculativeConfig validation and the n-gram proposer on hand-worked contexts."""

from __future__ import annotations

import numpy as np
import pytest

from vllm_mini.config import SpeculativeConfig
from vllm_mini.engine.arg_utils import EngineArgs
from vllm_mini.spec_decode.metrics import SpecDecodingStats
from vllm_mini.spec_decode.ngram_proposer import NgramProposer, propose_ngram


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"method": "medusa", "num_speculative_tokens": 2}, "method must be one of"),
        ({"method": "ngram", "num_speculative_tokens": 0}, "num_speculative_tokens must be"),
        ({"method": "ngram", "num_speculative_tokens": -3}, "num_speculative_tokens must be"),
        ({"method": "ngram"}, "num_speculative_tokens must be"),
        (
            {"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_min": 4,
             "prompt_lookup_max": 2},
            r"prompt_lookup_min \(4\) must be <= prompt_lookup_max \(2\)",
        ),
        ({"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_max": 0}, ">= 1"),
        ({"method": "ngram", "num_speculative_tokens": 2, "lookahead": 3}, "unknown"),
        ({"method": "draft_model", "num_speculative_tokens": 2}, "needs 'model'"),
        ({"method": "ngram", "num_speculative_tokens": 2, "disable_by_batch_size": 0},
         "disable_by_batch_size must be >= 1"),
        ('{"method": "ngram", ', "not valid JSON"),
    ],
)  # fmt: skip
def test_bad_speculative_configs_name_the_field(config, message):
    with pytest.raises(ValueError, match=message):
        SpeculativeConfig.from_cli(config)


def test_ngram_defaults_follow_vllm_and_cli_json_parses():
    config = SpeculativeConfig.from_cli('{"method": "ngram", "num_speculative_tokens": 3}')
    assert (config.prompt_lookup_min, config.prompt_lookup_max) == (5, 5)
    only_max = SpeculativeConfig(num_speculative_tokens=3, prompt_lookup_max=4)
    assert (only_max.prompt_lookup_min, only_max.prompt_lookup_max) == (4, 4)
    args = EngineArgs(speculative_config={"method": "ngram", "num_speculative_tokens": 2})
    assert SpeculativeConfig.from_cli(args.speculative_config).num_speculative_tokens == 2


def test_vocabulary_mismatch_is_an_error():
    class Model:
        def __init__(self, vocab_size):
            self.vocab_size = vocab_size

    config = SpeculativeConfig(method="draft_model", num_speculative_tokens=2, model="x")
    with pytest.raises(ValueError, match=r"vocabulary \(100 tokens\) differs .* \(384\)"):
        config.verify_with_models(Model(384), Model(100))


@pytest.mark.parametrize(
    ("tokens", "min_n", "max_n", "k", "expected"),
    [
        # vLLM's docstring example: [4, 2, 3] has no match, [2, 3] does; 3 tokens follow it.
        ([1, 2, 3, 4, 2, 3], 2, 3, 4, [4, 2, 3]),
        ([1, 2, 3, 1, 2, 3, 1, 2], 2, 3, 4, [3, 1, 2]),  # longest n (3) wins
        ([1, 2, 9, 1, 2, 8, 1, 2], 2, 2, 1, [9]),  # ties: the earliest occurrence
        ([7, 8, 9], 2, 3, 4, []),  # no earlier occurrence
        ([5, 5], 1, 1, 3, [5]),  # only one token follows the match
        ([1, 2, 3, 1, 2], 3, 3, 2, []),  # min_n longer than any match
    ],
)
def test_ngram_proposer_examples(tokens, min_n, max_n, k, expected):
    assert propose_ngram(np.array(tokens), min_n, max_n, k) == expected


def test_ngram_proposer_caps_drafts_at_max_model_len_and_room():
    proposer = NgramProposer(1, 2, k=4, max_model_len=10)
    tokens = np.array([1, 2, 3, 4, 5, 6, 7, 1])  # 2 positions left before max_model_len
    assert proposer.propose(tokens, max_drafts=4) == [2, 3]
    assert proposer.propose(tokens, max_drafts=1) == [2]
    assert proposer.propose(tokens, max_drafts=0) == []


def test_spec_decoding_stats():
    stats = SpecDecodingStats(num_spec_tokens=3)
    stats.observe_draft(3, 3)
    stats.observe_draft(3, 1)
    stats.observe_draft(2, 0)
    assert stats.num_draft_tokens == 8 and stats.num_accepted_tokens == 4
    assert stats.acceptance_rate == 0.5
    assert stats.mean_acceptance_length == pytest.approx(1 + 4 / 3)
    assert stats.num_accepted_tokens_per_pos == [2, 1, 1]
