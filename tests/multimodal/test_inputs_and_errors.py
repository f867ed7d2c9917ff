"""Multimodal inputs at the front door: placeholder expansion equals HF's LlavaProcessor, LLM.chat
takes OpenAI-style image parts, and every kind of bad input is a clear ValueError after which the
engine keeps serving."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from tests.multimodal.llava_checkpoint import IMAGE_TOKEN_ID, TOKENS_PER_IMAGE, random_image
from vllm_mini import LLM, SamplingParams
from vllm_mini.multimodal.hasher import hash_image
from vllm_mini.multimodal.processing import expand_placeholders

GREEDY = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)


def data_url(image: Image.Image, fmt: str = "PNG") -> str:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def llm(tiny_llava_dir):
    return LLM(
        str(tiny_llava_dir),
        kv_cache_memory_bytes=1 << 22,
        limit_mm_per_prompt={"image": 2},
        allowed_local_media_path=str(tiny_llava_dir),
    )


def test_placeholder_expansion_equals_hf_llava_processor(tiny_llava_dir, llm):
    from transformers import AutoProcessor

    hf = AutoProcessor.from_pretrained(tiny_llava_dir)
    prompt = "w5 <image> w6 <image> w7"
    images = [random_image(0), random_image(1)]
    expected = hf(text=prompt, images=images, return_tensors="pt")
    ours = llm.llm_engine.processor.process_inputs(
        "x", {"prompt": prompt, "multi_modal_data": {"image": images}}, GREEDY
    )[1]
    assert ours.prompt_token_ids == expected["input_ids"][0].tolist()
    assert [f.mm_position.offset for f in ours.mm_features] == [1, 2 + TOKENS_PER_IMAGE]
    for feature, pixels in zip(ours.mm_features, expected["pixel_values"]):
        assert feature.data["pixel_values"].equal(pixels)


def test_expand_placeholders_counts_must_match():
    ids, ranges = expand_placeholders([5, 9, 6], 9, [3])
    assert ids == [5, 9, 9, 9, 6] and [(r.offset, r.length) for r in ranges] == [(1, 3)]
    with pytest.raises(ValueError, match="1 image placeholder"):
        expand_placeholders([5, 9, 6], 9, [3, 3])


def test_image_hash_is_content_not_object():
    assert hash_image(random_image(0)) == hash_image(random_image(0))
    assert hash_image(random_image(0)) != hash_image(random_image(1))


def test_chat_with_image_parts_equals_generate_with_the_same_prompt(llm):
    image = random_image(5)
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": data_url(image)}},
                {"type": "text", "text": "w7 w8"},
            ],
        }
    ]
    chat = llm.chat(messages, GREEDY, use_tqdm=False)[0]
    # The template renders "user <image>\nw7 w8 w3": the same prompt written by hand.
    direct = llm.generate(
        {"prompt": "user <image>\nw7 w8 w3", "multi_modal_data": {"image": image}},
        GREEDY,
        use_tqdm=False,
    )[0]
    assert chat.prompt_token_ids.count(IMAGE_TOKEN_ID) == TOKENS_PER_IMAGE
    assert chat.prompt_token_ids == direct.prompt_token_ids
    assert chat.outputs[0].token_ids == direct.outputs[0].token_ids


def test_chat_reads_file_urls_only_inside_the_allowed_directory(llm, tiny_llava_dir, tmp_path):
    inside = tiny_llava_dir / "cat.png"
    random_image(6).save(inside)
    outside = tmp_path / "dog.png"
    random_image(6).save(outside)

    def chat(path):
        part = {"type": "image_url", "image_url": {"url": f"file://{path}"}}
        return llm.chat([{"role": "user", "content": [part]}], GREEDY, use_tqdm=False)

    assert len(chat(inside)[0].outputs[0].token_ids) == 4
    with pytest.raises(ValueError, match="outside the allowed directory"):
        chat(outside)


def _tiff_url() -> str:
    return data_url(random_image(0), "TIFF")


BAD_INPUTS = [
    ({"image": [random_image(0)] * 3}, "w5 <image> <image> <image>", "at most 2 image"),
    ({"image": [random_image(0)] * 2}, "w5 <image>", "1 image placeholder"),
    ({"image": random_image(0)}, "w5 w6", "0 image placeholder"),
    ({"image": "not an image"}, "w5 <image>", "must be a PIL.Image"),
    ({"image": Image.new("RGB", (5000, 5000))}, "w5 <image>", "too large"),
    ({"video": random_image(0)}, "w5 <image>", "supports only 'image'"),
]


@pytest.mark.parametrize("mm_data, prompt, error", BAD_INPUTS)
def test_bad_multimodal_data_is_a_clear_error(llm, mm_data, prompt, error):
    with pytest.raises(ValueError, match=error):
        llm.generate({"prompt": prompt, "multi_modal_data": mm_data}, GREEDY, use_tqdm=False)


@pytest.mark.parametrize(
    "url, error",
    [
        ("data:image/png;base64,aGVsbG8gd29ybGQ=", "could not be decoded"),
        ("data:image/png;base64,@@@", "not valid base64"),
        (_tiff_url(), "unsupported image format TIFF"),
        ("https://example.com/cat.png", "never fetches from the network"),
    ],
)
def test_bad_image_urls_are_clear_errors_and_the_engine_keeps_serving(llm, url, error):
    part = {"type": "image_url", "image_url": {"url": url}}
    with pytest.raises(ValueError, match=error):
        llm.chat([{"role": "user", "content": [part, {"type": "text", "text": "w5"}]}], GREEDY)
    out = llm.generate(
        {"prompt": "w5 <image>", "multi_modal_data": {"image": random_image(0)}},
        GREEDY,
        use_tqdm=False,
    )
    assert len(out[0].outputs[0].token_ids) == 4
    sched = llm.llm_engine.engine_core.scheduler
    assert not sched.has_requests()
    assert sched.kv_cache_manager.block_pool.get_num_free_blocks() == (
        sched.kv_cache_manager.block_pool.num_gpu_blocks
    )


def test_text_only_model_rejects_images(tiny_llama_dir):
    text_llm = LLM(str(tiny_llama_dir), kv_cache_memory_bytes=1 << 22)
    with pytest.raises(ValueError, match="text-only"):
        text_llm.generate(
            {"prompt": "w5", "multi_modal_data": {"image": random_image(0)}}, use_tqdm=False
        )
    part = {"type": "image_url", "image_url": {"url": data_url(random_image(0))}}
    with pytest.raises(ValueError, match="text-only"):
        text_llm.chat([{"role": "user", "content": [part]}], use_tqdm=False)
    assert text_llm.generate("w5 w6", GREEDY, use_tqdm=False)[0].outputs[0].token_ids


def test_limit_mm_per_prompt_is_checked_and_parsed_from_the_cli(tiny_llava_dir):
    import argparse

    from vllm_mini.engine.arg_utils import EngineArgs

    parser = EngineArgs.add_cli_args(argparse.ArgumentParser())
    args = parser.parse_args(
        ["--model", str(tiny_llava_dir), "--limit-mm-per-prompt", '{"image": 3}']
    )
    config = EngineArgs.from_cli_args(args).create_engine_config()
    assert config.model_config.limit_mm_per_prompt == {"image": 3}
    for bad in ('{"video": 1}', '{"image": -1}', "image=2"):
        with pytest.raises(ValueError, match="limit_mm_per_prompt"):
            EngineArgs(model=str(tiny_llava_dir), limit_mm_per_prompt=bad).create_engine_config()


def test_n_samples_of_an_image_prompt_share_its_image(llm):
    params = SamplingParams(n=3, max_tokens=4, temperature=1.0, seed=0, ignore_eos=True)
    prompt = {"prompt": "w5 <image> w6", "multi_modal_data": {"image": random_image(12)}}
    before = llm.llm_engine.engine_core.scheduler.encoder_cache_manager.num_encoder_runs
    out = llm.generate(prompt, params, use_tqdm=False)[0]
    assert len(out.outputs) == 3
    after = llm.llm_engine.engine_core.scheduler.encoder_cache_manager.num_encoder_runs
    assert after - before == 1  # three samples, one picture, one encoder run
