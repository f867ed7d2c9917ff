"""Lesson 10: your placeholder expansion, merge, step rows and block keys must match the engine's.

Runs `solutions.py` by default; `LESSON_IMPL=exercises` checks your `exercises.py`: expand against
the engine's expand_placeholders (and HF's LlavaProcessor through it), merge against
merge_multimodal_embeddings and then inside the real tiny LLaVA against HF's logits, rows against
PlaceholderRange.overlap, keys against generate_block_hash_extra_keys on a real Request.
"""

from __future__ import annotations

import random

import pytest
import torch

from lessons._impl import load_impl
from tests.multimodal.conftest import tiny_llava_dir  # noqa: F401
from tests.multimodal.llava_checkpoint import IMAGE_TOKEN_ID, random_image
from vllm_mini.core.kv_cache_utils import generate_block_hash_extra_keys
from vllm_mini.model_executor.models.utils import merge_multimodal_embeddings
from vllm_mini.multimodal.inputs import MultiModalFeatureSpec, PlaceholderRange
from vllm_mini.multimodal.processing import expand_placeholders
from vllm_mini.request import Request
from vllm_mini.sampling_params import SamplingParams

impl = load_impl(__file__)


def test_expand_hand_cases():
    assert impl.expand_placeholders([5, 9, 6], 9, [3]) == ([5, 9, 9, 9, 6], [(1, 3)])
    ids, spans = impl.expand_placeholders([9, 5, 9], 9, [2, 1])
    assert ids == [9, 9, 5, 9] and spans == [(0, 2), (3, 1)]
    with pytest.raises(ValueError):
        impl.expand_placeholders([5, 9], 9, [2, 2])


def test_expand_matches_the_engine():
    rng = random.Random(0)
    for _ in range(200):
        ids = [rng.choice([9, 5, 6, 7]) for _ in range(rng.randint(0, 12))]
        sizes = [rng.randint(1, 5) for _ in range(ids.count(9))]
        engine_ids, ranges = expand_placeholders(ids, 9, sizes)
        assert impl.expand_placeholders(ids, 9, sizes) == (
            engine_ids,
            [(r.offset, r.length) for r in ranges],
        )


def test_merge_matches_the_engine():
    gen = torch.Generator().manual_seed(0)
    embeds = torch.randn(10, 4, generator=gen)
    mask = torch.tensor([0, 1, 1, 0, 0, 1, 0, 0, 1, 1], dtype=torch.bool)
    mm = torch.randn(5, 4, generator=gen)
    before = embeds.clone()
    got = impl.merge_embeddings(embeds, mask, mm)
    assert torch.equal(got, merge_multimodal_embeddings(embeds, mask, mm))
    assert torch.equal(embeds, before), "merge must not modify inputs_embeds in place"


def test_merge_inside_llava_reproduces_hf(tiny_llava_dir):  # noqa: F811
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from tests.models.test_hf_parity import _metadata
    from vllm_mini.engine.arg_utils import EngineArgs
    from vllm_mini.forward_context import set_forward_context
    from vllm_mini.model_executor.model_loader import get_model

    hf = LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir, dtype=torch.float32).eval()
    inputs = AutoProcessor.from_pretrained(tiny_llava_dir)(
        text="w5 <image> w6", images=[random_image(0)], return_tensors="pt"
    )
    ids = inputs["input_ids"][0]
    config = EngineArgs(
        model=str(tiny_llava_dir), dtype="float32", attention_backend="naive"
    ).create_engine_config()
    model = get_model(config)
    with torch.inference_mode(), set_forward_context(_metadata("lesson10", 0, len(ids))):
        mm = model.get_multimodal_embeddings(inputs["pixel_values"]).flatten(0, 1)
        text = model.embed_input_ids(ids)
        embeds = impl.merge_embeddings(text, ids == IMAGE_TOKEN_ID, mm)
        logits = model.compute_logits(model(ids, torch.arange(len(ids)), inputs_embeds=embeds))
    with torch.no_grad():
        expected = hf(**inputs).logits[0]
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)


def test_rows_for_step_matches_the_engine():
    assert impl.rows_for_step((4, 16), 0, 8) == (0, 4)  # the chunk ends 4 tokens into the image
    assert impl.rows_for_step((4, 16), 8, 8) == (4, 12)  # the middle of the image
    assert impl.rows_for_step((4, 16), 20, 8) is None  # already past it
    rng = random.Random(1)
    for _ in range(500):
        offset, length = rng.randint(0, 20), rng.randint(1, 10)
        computed, scheduled = rng.randint(0, 30), rng.randint(1, 10)
        overlap = PlaceholderRange(offset, length).overlap(computed, computed + scheduled)
        expected = None if overlap is None else (overlap[0] - offset, overlap[1] - offset)
        assert impl.rows_for_step((offset, length), computed, scheduled) == expected


def _request(images: list[tuple[int, int, str]]) -> Request:
    features = [
        MultiModalFeatureSpec("image", h, PlaceholderRange(offset, length))
        for offset, length, h in images
    ]
    return Request("r", [1] * 64, SamplingParams(), None, mm_features=features)


def test_block_keys_match_the_engine():
    images = [(3, 16, "cat"), (19, 4, "dog"), (40, 8, "cat")]
    assert impl.block_extra_keys(images, 0, 16) == ("cat",)
    assert impl.block_extra_keys(images, 16, 32) == ("cat", "dog")
    assert impl.block_extra_keys(images, 48, 64) is None
    request = _request(images)
    for start in range(0, 64, 8):
        assert impl.block_extra_keys(images, start, start + 8) == (
            generate_block_hash_extra_keys(request, start, start + 8)
        )


@pytest.mark.demo
def test_demo_encodes_once_and_caches_by_image(capsys):
    demo = load_impl(__file__, "demo")
    figures = demo.main()
    out = capsys.readouterr().out
    assert "encoder runs" in out
    assert figures["encoder_runs_first"] == 1
    assert figures["chunk_steps"] > 1  # the image's 16 tokens were prefilled over several steps
    assert figures["cached_same_image"] == 32 and figures["cached_other_image"] == 16
    assert figures["encoder_runs_after"] == 2  # the repeat was a hit; the other image ran
