"""Images through the whole engine: scheduler, encoder cache, chunked prefill, preemption, prefix
caching. Every output is checked token for token against HF transformers' greedy generate on the
same tiny random LLaVA checkpoint, and every run ends with no leaked KV blocks or cache refs.
"""

from __future__ import annotations

import pytest
import torch

from tests.multimodal.llava_checkpoint import TOKENS_PER_IMAGE, random_image
from vllm_mini import LLM, SamplingParams

MAX_TOKENS = 6
GREEDY = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True)
WORDS = " ".join(f"w{i}" for i in range(10, 26))  # 16 words: exactly one KV block of text


@pytest.fixture(scope="module")
def hf(tiny_llava_dir):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir, dtype=torch.float32)
    return model.eval(), AutoProcessor.from_pretrained(tiny_llava_dir)


def hf_greedy(hf, prompt: str, images: list) -> list[int]:
    model, processor = hf
    if images:
        inputs = processor(text=prompt, images=images, return_tensors="pt")
    else:
        inputs = {"input_ids": processor.tokenizer(prompt, return_tensors="pt")["input_ids"]}
    with torch.no_grad():
        out = model.generate(
            **inputs, max_new_tokens=MAX_TOKENS, min_new_tokens=MAX_TOKENS, do_sample=False
        )
    return out[0, inputs["input_ids"].shape[1] :].tolist()


def request(prompt: str, images: list) -> dict | str:
    return {"prompt": prompt, "multi_modal_data": {"image": images}} if images else prompt


CASES = [
    ("w5 <image> w7 w8", [random_image(0)]),
    ("w9 w10 w11", []),  # text-only, in the same batch
    ("w5 <image> w6 <image> w7", [random_image(1), random_image(2)]),
    (f"{WORDS} <image> w30 w31", [random_image(3)]),
]


def assert_clean(llm: LLM) -> None:
    """Nothing leaked: every KV block is free and no image output is still referenced."""
    sched = llm.llm_engine.engine_core.scheduler
    kv = sched.kv_cache_manager
    assert kv.block_pool.get_num_free_blocks() == kv.block_pool.num_gpu_blocks
    assert all(not refs for refs in sched.encoder_cache_manager.cached.values())


def run(llm: LLM, cases) -> list[list[int]]:
    outs = llm.generate([request(p, imgs) for p, imgs in cases], GREEDY, use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outs]


@pytest.fixture(scope="module")
def expected(hf):
    return [hf_greedy(hf, p, imgs) for p, imgs in CASES]


def test_mixed_text_and_image_batch_equals_hf(tiny_llava_dir, expected):
    llm = LLM(str(tiny_llava_dir), kv_cache_memory_bytes=1 << 22)
    assert run(llm, CASES) == expected
    # Four distinct pictures, each encoded once.
    assert llm.llm_engine.engine_core.scheduler.encoder_cache_manager.num_encoder_runs == 4
    assert_clean(llm)


def test_chunked_prefill_splits_placeholder_spans_and_encodes_once(tiny_llava_dir, expected):
    # 5 tokens a step: every image's 16 placeholder tokens are spread over 4-5 steps.
    llm = LLM(str(tiny_llava_dir), kv_cache_memory_bytes=1 << 22, max_num_batched_tokens=5)
    assert run(llm, CASES) == expected
    assert llm.llm_engine.engine_core.scheduler.encoder_cache_manager.num_encoder_runs == 4
    assert_clean(llm)


def test_encoder_budget_defers_the_second_image_to_a_later_step(tiny_llava_dir, expected):
    # The encoder may produce 16 embeddings a step: the two-image prompt needs two steps.
    llm = LLM(
        str(tiny_llava_dir), kv_cache_memory_bytes=1 << 22, max_num_batched_tokens=TOKENS_PER_IMAGE
    )
    steps = []
    core = llm.llm_engine.engine_core
    schedule = core.scheduler.schedule

    def recording_schedule():
        out = schedule()
        steps.append(sum(len(v) for v in out.scheduled_encoder_inputs.values()))
        return out

    core.scheduler.schedule = recording_schedule
    assert run(llm, CASES[2:3]) == expected[2:3]
    assert max(steps) == 1 and sum(steps) == 2
    assert_clean(llm)


def test_preempted_image_requests_resume_with_identical_output(tiny_llava_dir, expected):
    # 14 blocks of 4 tokens and 8-token chunks: requests preempt each other, some of them with an
    # image's placeholder span half computed.
    llm = LLM(
        str(tiny_llava_dir),
        block_size=4,
        num_gpu_blocks_override=14,
        max_num_seqs=4,
        max_num_batched_tokens=8,
    )
    sched = llm.llm_engine.engine_core.scheduler
    preempt, mid_span = sched._preempt, []

    def recording_preempt(request):
        done = request.num_computed_tokens
        mid_span.extend(f for f in request.mm_features if f.mm_position.overlap(done - 1, done))
        preempt(request)

    sched._preempt = recording_preempt
    assert run(llm, CASES) == expected
    assert sched.num_preemptions > 0 and mid_span
    # The encoder cache outlives preemption: still one encoder run per picture.
    assert sched.encoder_cache_manager.num_encoder_runs == 4
    assert_clean(llm)


def test_prefix_cache_hits_for_the_same_image_and_misses_for_another(tiny_llava_dir, hf):
    llm = LLM(str(tiny_llava_dir), kv_cache_memory_bytes=1 << 22, enable_prefix_caching=True)
    prompt = f"{WORDS} <image> w30 w31"  # block 0: text; block 1: the image's 16 tokens
    first, second = random_image(10), random_image(11)
    a = llm.generate(request(prompt, [first]), GREEDY, use_tqdm=False)[0]
    same = llm.generate(request(prompt, [first]), GREEDY, use_tqdm=False)[0]
    other = llm.generate(request(prompt, [second]), GREEDY, use_tqdm=False)[0]
    assert a.num_cached_tokens == 0
    assert same.num_cached_tokens == 32  # text block and image block both reused
    assert other.num_cached_tokens == 16  # only the text block: the image block's key differs
    assert list(same.outputs[0].token_ids) == list(a.outputs[0].token_ids)
    assert list(other.outputs[0].token_ids) == hf_greedy(hf, prompt, [second])
    assert_clean(llm)


def test_a_one_image_encoder_cache_evicts_and_the_runner_drops_what_was_evicted(
    tiny_llava_dir, expected
):
    # Encoder budget and cache = 16 embeddings: one image's output at a time.
    llm = LLM(
        str(tiny_llava_dir), kv_cache_memory_bytes=1 << 22, max_num_batched_tokens=TOKENS_PER_IMAGE
    )
    assert run(llm, CASES) == expected
    runner = llm.llm_engine.engine_core.worker.model_runner
    cache = llm.llm_engine.engine_core.scheduler.encoder_cache_manager
    assert cache.num_encoder_runs == 4
    assert len(runner.encoder_cache) <= 1  # evicted outputs were dropped by the runner too
    assert set(runner.encoder_cache) == set(cache.cached)
    assert_clean(llm)


def test_aborting_an_image_request_mid_prefill_frees_its_blocks_and_cache_refs(
    tiny_llava_dir, expected
):
    llm = LLM(str(tiny_llava_dir), kv_cache_memory_bytes=1 << 22, max_num_batched_tokens=5)
    engine = llm.llm_engine
    prompt, images = CASES[3]
    engine.add_request("doomed", request(prompt, images), GREEDY)
    for _ in range(5):  # 25 of its 34 prompt tokens: in the middle of the image span
        engine.step()
    sched = engine.engine_core.scheduler
    assert any(sched.encoder_cache_manager.cached.values())  # its image is referenced now
    engine.abort_request("doomed")
    engine.step()
    assert_clean(llm)
    assert run(llm, CASES[:1]) == expected[:1]  # and the engine keeps serving
