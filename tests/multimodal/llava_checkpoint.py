"""A tiny random LLaVA checkpoint written by transformers itself (our peer), with its processor.

CLIP vision tower (2 layers, 32x32 images in 8x8 patches -> 16 image tokens), a 2-layer Llama,
a word-level tokenizer whose `<image>` token is the config's image_token_index, and a LlavaProcessor
(CLIPImageProcessor + tokenizer) saved beside the weights, as a real LLaVA checkpoint ships them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

VOCAB_SIZE = 384
IMAGE_TOKEN_ID = VOCAB_SIZE - 1  # the tokenizer's added "<image>" token
IMAGE_SIZE, PATCH_SIZE = 32, 8
TOKENS_PER_IMAGE = (IMAGE_SIZE // PATCH_SIZE) ** 2  # "default" strategy drops the CLS token


def make_tiny_llava(
    path: Path,
    seed: int = 0,
    text_overrides: dict | None = None,
    vision_overrides: dict | None = None,
) -> Path:
    """Save the checkpoint; the overrides make a larger one (benchmarks/multimodal.py)."""
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    text = LlamaConfig(
        **{
            **dict(
                vocab_size=VOCAB_SIZE,
                hidden_size=64,
                intermediate_size=128,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                max_position_embeddings=256,
                rms_norm_eps=1e-6,
                initializer_range=0.2,
                tie_word_embeddings=False,
                bos_token_id=1,
                eos_token_id=2,
            ),
            **(text_overrides or {}),
        }
    )
    vision = CLIPVisionConfig(
        **{
            **dict(
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                image_size=IMAGE_SIZE,
                patch_size=PATCH_SIZE,
                initializer_range=0.2,
            ),
            **(vision_overrides or {}),
        }
    )
    config = LlavaConfig(
        vision_config=vision.to_dict(),
        text_config=text.to_dict(),
        image_token_index=IMAGE_TOKEN_ID,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    model.save_pretrained(path, safe_serialization=True)
    tokenizer = _tiny_tokenizer()
    size = vision.image_size
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size}
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=vision.patch_size,
        vision_feature_select_strategy="default",
        image_token="<image>",
        num_additional_image_tokens=1,
    )
    processor.save_pretrained(path)
    return path


def _tiny_tokenizer():
    """Word-level vocabulary w3..w382 plus "<image>" as an added special token (id 383)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for i in range(3, IMAGE_TOKEN_ID):
        vocab[f"w{i}"] = i
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    fast.add_special_tokens({"additional_special_tokens": ["<image>"]})
    assert fast.convert_tokens_to_ids("<image>") == IMAGE_TOKEN_ID
    fast.chat_template = (
        "{% for m in messages %}{{ m['role'] }} {{ m['content'] }} {% endfor %}"
        "{% if add_generation_prompt %}w3{% endif %}"
    )
    return fast


def random_image(seed: int, size: tuple[int, int] = (40, 36)) -> Image.Image:
    """A noise image (not square, so resize and center-crop both matter)."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
