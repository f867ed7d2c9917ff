"""Our LLaVA produces HF transformers' logits (float32, max abs diff <= 1e-4).

The peer is HF's LlavaForConditionalGeneration on the same tiny random checkpoint, with HF's own
LlavaProcessor preparing its inputs. Prefill compares every position of a prompt holding one or
two images; decode then feeds tokens one at a time through the naive KV cache and compares each
step with HF's logits for the whole sequence.
"""

from __future__ import annotations

import pytest
import torch

from tests.models.test_hf_parity import _metadata
from tests.multimodal.llava_checkpoint import IMAGE_TOKEN_ID, TOKENS_PER_IMAGE, random_image
from vllm_mini.engine.arg_utils import EngineArgs
from vllm_mini.forward_context import set_forward_context
from vllm_mini.model_executor.model_loader import get_model

TOL = 1e-4
PROMPTS = {
    1: "w5 w6 <image> w7 w8 w9",
    2: "w5 <image> w6 w7 <image> w8",
}


@pytest.fixture(scope="module")
def peers(tiny_llava_dir):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    hf = LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir, dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(tiny_llava_dir)
    config = EngineArgs(
        model=str(tiny_llava_dir), dtype="float32", attention_backend="naive"
    ).create_engine_config()
    return hf.eval(), processor, get_model(config)


def _ours(model, ids, pixel_values, start, end, req_id="r"):
    """Logits for positions [start, end): image rows merged only where the span has them."""
    with set_forward_context(_metadata(req_id, start, end)), torch.inference_mode():
        chunk = ids[start:end]
        is_mm = chunk == IMAGE_TOKEN_ID
        mm = None
        if bool(is_mm.any()):
            # Image rows in prompt order; this chunk takes those after the ones before it.
            rows = model.get_multimodal_embeddings(pixel_values).flatten(0, 1)
            first = int((ids[:start] == IMAGE_TOKEN_ID).sum())
            mm = rows[first : first + int(is_mm.sum())]
        embeds = model.embed_input_ids(chunk, mm, is_mm)
        hidden = model(chunk, torch.arange(start, end), inputs_embeds=embeds)
        return model.compute_logits(hidden)


@pytest.mark.parametrize("num_images", [1, 2])
def test_prefill_and_decode_logits_match_hf(peers, num_images):
    hf, processor, ours = peers
    images = [random_image(seed) for seed in range(num_images)]
    inputs = processor(text=PROMPTS[num_images], images=images, return_tensors="pt")
    ids = inputs["input_ids"][0]
    assert int((ids == IMAGE_TOKEN_ID).sum()) == num_images * TOKENS_PER_IMAGE
    pixel_values = inputs["pixel_values"]
    with torch.no_grad():
        expected = hf(input_ids=ids[None], pixel_values=pixel_values).logits[0]
    got = _ours(ours, ids, pixel_values, 0, len(ids), req_id=f"prefill{num_images}")
    torch.testing.assert_close(got, expected, atol=TOL, rtol=0)

    # Decode: prefill the prompt, then one greedy token at a time through the KV cache.
    req = f"decode{num_images}"
    seq = ids.clone()
    _ours(ours, seq, pixel_values, 0, len(seq), req_id=req)
    for _ in range(4):
        with torch.no_grad():
            full = hf(input_ids=seq[None], pixel_values=pixel_values).logits[0, -1]
        seq = torch.cat([seq, full.argmax().view(1)])
        with torch.no_grad():
            expected = hf(input_ids=seq[None], pixel_values=pixel_values).logits[0, -1]
        got = _ours(ours, seq, pixel_values, len(seq) - 1, len(seq), req_id=req)[-1]
        torch.testing.assert_close(got, expected, atol=TOL, rtol=0)
