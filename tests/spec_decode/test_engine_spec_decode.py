"""Speculative decoding in the engine: the same tokens as without it, and nothing leaked.

Greedy decoding must give exactly the non-speculative output, whatever the drafts, with every
feature that moves KV around: preemption (a tiny cache), prefix caching (shared prompt starts),
chunked prefill (a small token budget). tests/kv_checker.py watches every step: a rejected
draft's KV must never be read as if it were the real token's. Each case also checks that drafts
were really verified and accepted, and that every KV block is free at the end.
"""

from __future__ import annotations

import pytest

from tests.kv_checker import KVReadChecker
from vllm_mini import LLM, SamplingParams

NGRAM = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_min": 1,
         "prompt_lookup_max": 3}  # fmt: skip

# Repetitive prompts give the n-gram proposer matches; the tiny random model also falls into
# loops of its own, which it then keeps proposing.
PROMPTS = [
    [10, 11, 12, 13, 14] * 4,
    list(range(3, 40)),
    [7, 8, 9] * 9 + [50],
    [10, 11, 12, 13, 14] * 3 + [99, 98],  # shares its start with the first prompt
    [200, 201],
    list(range(100, 180)),  # long: chunked under a small budget
]
MAX_TOKENS = [40, 25, 33, 18, 30, 12]


def run(model_dir, spec, params=None, **kwargs):
    llm = LLM(str(model_dir), speculative_config=spec, **kwargs)
    params = params or [
        SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True) for n in MAX_TOKENS
    ]
    prompts = [{"prompt_token_ids": p} for p in PROMPTS]
    with KVReadChecker(llm.llm_engine) as checker:
        outs = llm.generate(prompts, params, use_tqdm=False)
    assert checker.steps > 0
    core = llm.llm_engine.engine_core
    assert core.scheduler.kv_cache_manager.usage == 0.0  # every block back in the pool
    return [list(o.outputs[0].token_ids) for o in outs], core.scheduler


ENGINE_CASES = pytest.mark.parametrize(
    "engine_kwargs",
    [
        {},
        {"num_gpu_blocks_override": 12, "block_size": 8},  # preemption
        {"enable_prefix_caching": True},
        {"max_num_batched_tokens": 24, "max_num_seqs": 4},  # chunked prefill, small batches
    ],
    ids=["plain", "preemption", "prefix-caching", "chunked-prefill"],
)


@ENGINE_CASES
def test_greedy_ngram_equals_plain_decoding(tiny_llama_dir, engine_kwargs):
    ref, _ = run(tiny_llama_dir, None, **engine_kwargs)
    outs, scheduler = run(tiny_llama_dir, NGRAM, **engine_kwargs)
    assert outs == ref
    stats = scheduler.spec_decoding_stats
    assert stats.num_draft_tokens > 0 and stats.num_accepted_tokens > 0
    if "num_gpu_blocks_override" in engine_kwargs:
        assert scheduler.num_preemptions > 0


def test_stops_and_max_tokens_cut_a_multi_token_step_where_plain_decoding_stops(tiny_llama_dir):
    ref_out, _ = run(tiny_llama_dir, None)
    # Stop on a token the reference emits mid-way, and cap others below one step's reach.
    stop_token = ref_out[0][7]
    params = [
        SamplingParams(temperature=0.0, max_tokens=40, stop_token_ids=[stop_token]),
        SamplingParams(temperature=0.0, max_tokens=2, ignore_eos=True),
        SamplingParams(temperature=0.0, max_tokens=33, stop=[" w" + str(ref_out[2][9])]),
        SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True),
        SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True),
        SamplingParams(temperature=0.0, max_tokens=5, ignore_eos=True),
    ]
    llm_ref = LLM(str(tiny_llama_dir))
    llm_spec = LLM(str(tiny_llama_dir), speculative_config=NGRAM)
    prompts = [{"prompt_token_ids": p} for p in PROMPTS]
    ref = llm_ref.generate(prompts, params, use_tqdm=False)
    spec = llm_spec.generate(prompts, params, use_tqdm=False)
    for a, b in zip(ref, spec):
        assert b.outputs[0].token_ids == a.outputs[0].token_ids
        assert b.outputs[0].text == a.outputs[0].text
        assert b.outputs[0].finish_reason == a.outputs[0].finish_reason
    assert spec[0].outputs[0].token_ids[-1] == stop_token
    assert spec[2].outputs[0].finish_reason == "stop"
    assert llm_spec.llm_engine.engine_core.scheduler.kv_cache_manager.usage == 0.0


def test_disable_by_batch_size_stops_drafting_for_big_batches(tiny_llama_dir):
    spec = {**NGRAM, "disable_by_batch_size": 2}
    _, batched = run(tiny_llama_dir, spec, max_num_seqs=8)
    _, single = run(tiny_llama_dir, spec, max_num_seqs=1)
    # With 6 requests at once nothing is drafted until only one is left running.
    assert (
        batched.spec_decoding_stats.num_draft_tokens < single.spec_decoding_stats.num_draft_tokens
    )
    assert single.spec_decoding_stats.num_accepted_tokens > 0


def test_greedy_logprobs_match_plain_decoding(tiny_llama_dir):
    params = SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True, logprobs=2)
    prompts = [{"prompt_token_ids": p} for p in PROMPTS[:3]]
    ref = LLM(str(tiny_llama_dir)).generate(prompts, params, use_tqdm=False)
    spec = LLM(str(tiny_llama_dir), speculative_config=NGRAM).generate(
        prompts, params, use_tqdm=False
    )
    for a, b in zip(ref, spec):
        assert b.outputs[0].token_ids == a.outputs[0].token_ids
        assert len(b.outputs[0].logprobs) == len(b.outputs[0].token_ids)
        for la, lb in zip(a.outputs[0].logprobs, b.outputs[0].logprobs):
            assert la.keys() == lb.keys()
            for tok in la:
                assert lb[tok].logprob == pytest.approx(la[tok].logprob, abs=1e-4)
                assert lb[tok].rank == la[tok].rank


def test_seeded_sampling_with_speculation_repeats_and_n_gt_1_works(tiny_llama_dir):
    params = SamplingParams(temperature=0.8, top_k=20, max_tokens=24, seed=3, n=2)
    prompts = [{"prompt_token_ids": p} for p in PROMPTS[:3]]
    first = LLM(str(tiny_llama_dir), speculative_config=NGRAM).generate(
        prompts, params, use_tqdm=False
    )
    llm = LLM(str(tiny_llama_dir), speculative_config=NGRAM)
    second = llm.generate(prompts, params, use_tqdm=False)
    for a, b in zip(first, second):
        assert len(b.outputs) == 2
        assert [o.token_ids for o in a.outputs] == [o.token_ids for o in b.outputs]
        assert all(len(o.token_ids) == 24 or o.finish_reason == "stop" for o in b.outputs)
    stats = llm.llm_engine.get_stats()
    assert stats["spec_decode_num_draft_tokens"] > 0
    assert "spec_decode_num_accepted_tokens_pos0" in stats


def draft(model_dir=None, layers=None, k=3):
    spec = {"method": "draft_model", "num_speculative_tokens": k}
    if model_dir is not None:
        spec["model"] = str(model_dir)
    if layers is not None:
        spec["num_draft_layers"] = layers
    return spec


@ENGINE_CASES
def test_greedy_draft_model_equals_plain_decoding(tiny_llama_dir, engine_kwargs):
    """A 1-layer draft (the target's first layer) guesses poorly but must change nothing."""
    ref, _ = run(tiny_llama_dir, None, **engine_kwargs)
    outs, scheduler = run(tiny_llama_dir, draft(layers=1), **engine_kwargs)
    assert outs == ref
    assert scheduler.spec_decoding_stats.num_draft_tokens > 0


def test_the_target_as_its_own_draft_is_always_accepted(tiny_llama_dir):
    """Draft == target: greedy drafts are the target's argmax, so every one is accepted — which
    also proves the draft's KV, positions and slots line up with the target's, step after step.
    Random drafts come from q == p, so min(1, p/q) is 1 up to rounding."""
    outs, scheduler = run(tiny_llama_dir, draft(model_dir=tiny_llama_dir), max_num_seqs=3)
    assert scheduler.spec_decoding_stats.acceptance_rate == 1.0
    params = [SamplingParams(temperature=1.0, max_tokens=n, ignore_eos=True, seed=i)
              for i, n in enumerate(MAX_TOKENS)]  # fmt: skip
    _, scheduler = run(tiny_llama_dir, draft(model_dir=tiny_llama_dir), params)
    assert scheduler.spec_decoding_stats.acceptance_rate > 0.97


def test_draft_model_errors_and_kv_budget(tiny_llama_dir, tmp_path):
    from tests.conftest import make_tiny_checkpoint

    other = make_tiny_checkpoint(tmp_path / "other_vocab", "llama", vocab_size=200)
    with pytest.raises(ValueError, match=r"vocabulary \(200 tokens\) differs"):
        LLM(str(tiny_llama_dir), speculative_config=draft(model_dir=other))
    with pytest.raises(ValueError, match="num_draft_layers \\(5\\) is more than"):
        LLM(str(tiny_llama_dir), speculative_config=draft(layers=5))
    # The draft's K/V share each block: the same budget holds half as many blocks when the
    # draft is as big as the target.
    plain = LLM(str(tiny_llama_dir), kv_cache_memory_bytes=1 << 20)
    spec = LLM(str(tiny_llama_dir), kv_cache_memory_bytes=1 << 20,
               speculative_config=draft(model_dir=tiny_llama_dir))  # fmt: skip
    blocks = plain.llm_engine.engine_core.num_blocks
    assert spec.llm_engine.engine_core.num_blocks == blocks // 2


@pytest.mark.slow
def test_smollm2_greedy_speculation_changes_no_token(smollm2_gguf):
    """The real default model: n-gram and self-speculative drafts on a prompt it must copy."""
    code = "def area(w, h):\n    return w * h\n\n\ndef perimeter(w, h):\n    return 2 * (w + h)\n"
    messages = [[{"role": "user", "content": f"Add a docstring to each function:\n\n{code}"}]]
    params = SamplingParams(temperature=0.0, max_tokens=64)
    outputs = {}
    for name, spec in (
        ("plain", None),
        ("ngram", {**NGRAM, "prompt_lookup_min": 2, "prompt_lookup_max": 4}),
        ("draft", draft(layers=4, k=2)),
    ):
        llm = LLM(str(smollm2_gguf), speculative_config=spec)
        outputs[name] = llm.chat(messages, params, use_tqdm=False)[0].outputs[0]
        if spec is not None:
            stats = llm.llm_engine.engine_core.scheduler.spec_decoding_stats
            assert stats.num_draft_tokens > 0
            if name == "ngram":  # the answer quotes the code: prompt lookup must hit
                assert stats.acceptance_rate > 0.3
    assert outputs["ngram"].token_ids == outputs["plain"].token_ids
    assert outputs["draft"].token_ids == outputs["plain"].token_ids
    assert outputs["ngram"].text == outputs["plain"].text
