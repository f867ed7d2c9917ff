"""End to end on a tiny random Llama: LLM.generate against HF generate, across backends, under
preemption, chunked prefill and prefix caching — outputs must not change, blocks must not leak."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from vllm_mini import LLM, SamplingParams
from vllm_mini.attention.ops import is_paged_attention_available

GREEDY = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)


def _prompts(n: int, seed: int = 0, lo: int = 4, hi: int = 40) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(lo, hi, (1,), generator=g))
        out.append({"prompt_token_ids": torch.randint(3, 384, (length,), generator=g).tolist()})
    return out


def _tokens(outputs) -> list[list[int]]:
    return [o.outputs[0].token_ids for o in outputs]


def _assert_no_leak(llm: LLM) -> None:
    stats = llm.llm_engine.get_stats()
    assert stats["num_running_reqs"] == 0 and stats["num_waiting_reqs"] == 0
    assert stats["kv_cache_usage"] == 0.0
    assert not llm.llm_engine.has_unfinished_requests()


@pytest.fixture(scope="module")
def hf_greedy(tiny_llama_dir):
    hf = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    results = []
    for p in _prompts(6):
        ids = torch.tensor([p["prompt_token_ids"]])
        with torch.no_grad():
            gen = hf.generate(
                ids, max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0
            )
        results.append(gen[0, ids.shape[1] :].tolist())
    return results


BACKENDS = [b for b in ("naive", "torch", "cpu") if b == "naive" or is_paged_attention_available(b)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_greedy_matches_hf_generate(tiny_llama_dir, hf_greedy, backend):
    llm = LLM(str(tiny_llama_dir), attention_backend=backend, kv_cache_memory_bytes=1 << 22)
    assert _tokens(llm.generate(_prompts(6), GREEDY, use_tqdm=False)) == hf_greedy
    _assert_no_leak(llm)


def test_preemption_keeps_outputs_identical(tiny_llama_dir):
    prompts = _prompts(32, seed=3, lo=10, hi=30)
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    roomy = LLM(str(tiny_llama_dir), kv_cache_memory_bytes=1 << 22)
    alone = [_tokens(roomy.generate([p], params, use_tqdm=False))[0] for p in prompts]
    # 16 blocks x 8 tokens = 128 tokens for 32 requests of up to ~54 tokens: preemption must happen.
    tight = LLM(str(tiny_llama_dir), block_size=8, num_gpu_blocks_override=16, max_num_seqs=32)
    together = _tokens(tight.generate(prompts, params, use_tqdm=False))
    assert together == alone
    assert tight.llm_engine.get_stats()["num_preemptions"] > 0
    _assert_no_leak(tight)


def test_chunked_prefill_matches_whole_prefill(tiny_llama_dir):
    prompts = _prompts(4, seed=4, lo=60, hi=90)
    whole = LLM(str(tiny_llama_dir), kv_cache_memory_bytes=1 << 22)
    chunked = LLM(str(tiny_llama_dir), kv_cache_memory_bytes=1 << 22, max_num_batched_tokens=16)
    assert _tokens(chunked.generate(prompts, GREEDY, use_tqdm=False)) == _tokens(
        whole.generate(prompts, GREEDY, use_tqdm=False)
    )


def test_prefix_cache_hits_and_outputs_unchanged(tiny_llama_dir):
    shared = list(range(10, 58))  # 48 tokens = 3 blocks of 16
    prompts = [{"prompt_token_ids": shared + [100 + i, 200 + i]} for i in range(3)]
    cold = LLM(str(tiny_llama_dir), enable_prefix_caching=False, kv_cache_memory_bytes=1 << 22)
    warm = LLM(str(tiny_llama_dir), kv_cache_memory_bytes=1 << 22)
    expected = _tokens(cold.generate(prompts, GREEDY, use_tqdm=False))
    first = warm.generate(prompts[:1], GREEDY, use_tqdm=False)
    rest = warm.generate(prompts[1:], GREEDY, use_tqdm=False)
    assert _tokens(first + rest) == expected
    assert [o.num_cached_tokens for o in rest] == [48, 48]
    assert warm.llm_engine.get_stats()["prefix_cache_hits"] >= 96
    _assert_no_leak(warm)


def test_sampling_controls(tiny_llama_dir):
    llm = LLM(str(tiny_llama_dir), kv_cache_memory_bytes=1 << 22)
    p = _prompts(1, seed=5)[0]
    greedy = _tokens(llm.generate([p], GREEDY, use_tqdm=False))[0]
    # stop_token_ids: stop at the 4th greedy token, which is not part of the output text.
    out = llm.generate(
        [p],
        SamplingParams(temperature=0, max_tokens=12, stop_token_ids=[greedy[3]]),
        use_tqdm=False,
    )[0]
    first_hit = greedy.index(greedy[3])
    assert out.outputs[0].token_ids == greedy[: first_hit + 1]
    assert out.outputs[0].finish_reason == "stop" and out.outputs[0].stop_reason == greedy[3]
    # max_tokens caps with finish_reason "length".
    out = llm.generate(
        [p], SamplingParams(temperature=0, max_tokens=3, ignore_eos=True), use_tqdm=False
    )[0]
    assert out.outputs[0].token_ids == greedy[:3] and out.outputs[0].finish_reason == "length"
    # Seeds: same seed same tokens, n=2 gives two different samples.
    sp = SamplingParams(temperature=1.0, max_tokens=10, seed=7, ignore_eos=True)
    a, b = (_tokens(llm.generate([p], sp, use_tqdm=False))[0] for _ in range(2))
    assert a == b
    two = llm.generate(
        [p],
        SamplingParams(n=2, temperature=1.0, max_tokens=10, seed=1, ignore_eos=True),
        use_tqdm=False,
    )[0]
    assert len(two.outputs) == 2 and two.outputs[0].token_ids != two.outputs[1].token_ids
    _assert_no_leak(llm)


def test_stop_strings_cut_the_text(tiny_llama_dir):
    llm = LLM(str(tiny_llama_dir), kv_cache_memory_bytes=1 << 22)
    p = _prompts(1, seed=6)[0]
    full = llm.generate([p], GREEDY, use_tqdm=False)[0].outputs[0].text
    words = full.split()
    stop = words[2]
    out = llm.generate(
        [p],
        SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, stop=[stop]),
        use_tqdm=False,
    )[0].outputs[0]
    assert out.finish_reason == "stop" and out.stop_reason == stop
    assert stop not in out.text and full.startswith(out.text)
    kept = llm.generate(
        [p],
        SamplingParams(
            temperature=0,
            max_tokens=12,
            ignore_eos=True,
            stop=[stop],
            include_stop_str_in_output=True,
        ),
        use_tqdm=False,
    )[0].outputs[0]
    assert kept.text.endswith(stop)
    _assert_no_leak(llm)


def test_logprobs_are_log_softmax_of_model_logits(tiny_llama_dir):
    llm = LLM(str(tiny_llama_dir), kv_cache_memory_bytes=1 << 22)
    hf = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    p = _prompts(1, seed=8)[0]
    out = llm.generate(
        [p],
        SamplingParams(temperature=0, max_tokens=3, logprobs=2, ignore_eos=True),
        use_tqdm=False,
    )[0].outputs[0]
    ids = p["prompt_token_ids"] + out.token_ids
    with torch.no_grad():
        ref = torch.log_softmax(hf(torch.tensor([ids])).logits[0].float(), -1)
    n = len(p["prompt_token_ids"])
    for step, token in enumerate(out.token_ids):
        entry = out.logprobs[step]
        assert entry[token].rank == 1  # greedy token is the top-1
        assert abs(entry[token].logprob - ref[n - 1 + step, token].item()) < 1e-4
        assert len(entry) == 2  # sampled token is also the top-1, plus the 2nd best
    assert (
        abs(
            out.cumulative_logprob
            - sum(out.logprobs[i][t].logprob for i, t in enumerate(out.token_ids))
        )
        < 1e-5
    )


def test_bad_requests_raise_and_engine_keeps_serving(tiny_llama_dir):
    llm = LLM(str(tiny_llama_dir), kv_cache_memory_bytes=1 << 22, max_model_len=64)
    p = _prompts(1, seed=9)[0]
    with pytest.raises(ValueError, match="max_model_len"):
        llm.generate([{"prompt_token_ids": [5] * 65}], GREEDY, use_tqdm=False)
    with pytest.raises(ValueError, match="empty"):
        llm.generate([{"prompt_token_ids": []}], GREEDY, use_tqdm=False)
    with pytest.raises(ValueError, match=r"\[0, 384\)"):
        llm.generate([{"prompt_token_ids": [5, 9999]}], GREEDY, use_tqdm=False)
    with pytest.raises(ValueError, match="prompt_token_ids must be a list of ints"):
        llm.generate([{"prompt_token_ids": [True, 5]}], GREEDY, use_tqdm=False)
    with pytest.raises(ValueError, match="detokenize"):
        SamplingParams(stop=["w5"], detokenize=False)
    # A batch with one bad prompt enqueues nothing; the next good call works and nothing leaked.
    with pytest.raises(ValueError):
        llm.generate([p, {"prompt_token_ids": []}], GREEDY, use_tqdm=False)
    assert len(llm.generate([p], GREEDY, use_tqdm=False)[0].outputs[0].token_ids) == 12
    _assert_no_leak(llm)


def test_abort_in_every_state_frees_all_blocks(tiny_llama_dir):
    llm = LLM(str(tiny_llama_dir), kv_cache_memory_bytes=1 << 22, max_num_seqs=2)
    engine = llm.llm_engine
    for i, p in enumerate(_prompts(4, seed=10)):
        engine.add_request(f"r{i}", p, GREEDY)
    engine.step()  # r0, r1 running; r2, r3 waiting
    assert engine.get_stats()["num_waiting_reqs"] == 2
    engine.abort_request(["r0", "r3"])  # one running, one waiting
    while engine.has_unfinished_requests():
        engine.step()
    stats = engine.get_stats()
    assert stats["kv_cache_usage"] == 0.0 and stats["num_running_reqs"] == 0


def test_triton_backend_matches_naive(tiny_llama_dir):
    """The Triton kernels inside the full engine (on CPU: Triton's interpreter, see conftest.py)."""
    prompts = _prompts(2, seed=11, lo=4, hi=12)
    params = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)
    naive = LLM(str(tiny_llama_dir), attention_backend="naive")
    triton_llm = LLM(str(tiny_llama_dir), attention_backend="triton", kv_cache_memory_bytes=1 << 20)
    assert _tokens(triton_llm.generate(prompts, params, use_tqdm=False)) == _tokens(
        naive.generate(prompts, params, use_tqdm=False)
    )
