"""A tiny random Llama checkpoint with a word-level tokenizer, so the visualizer runs in seconds.

Stages 4-5 teaching tool. Mirrors no vLLM file; it is the recipe of tests/conftest.py
(`make_tiny_checkpoint`), kept here so the app does not import tests. The weights are random, so
the text is gibberish (words like "w17 w203"), but every block, step and preemption is real engine
behaviour. Next: workloads.py.
"""

from __future__ import annotations

from pathlib import Path

import torch

# Word-level vocabulary: ids 0-2 are <unk>, <s>, </s>; every other id i is the word "w{i}".
TINY_VOCAB_SIZE = 384
FIRST_WORD_ID = 3


def build_tiny_model(path: str | Path, seed: int = 0, max_position_embeddings: int = 1024) -> Path:
    """Save a 2-layer random LlamaForCausalLM (transformers' own class) and its tokenizer."""
    import transformers

    path = Path(path)
    config = transformers.LlamaConfig(
        vocab_size=TINY_VOCAB_SIZE,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_position_embeddings,
        rms_norm_eps=1e-6,
        initializer_range=0.2,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config).eval()
    model.save_pretrained(path, safe_serialization=True)
    _save_word_tokenizer(path)
    return path


def _save_word_tokenizer(path: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for i in range(FIRST_WORD_ID, TINY_VOCAB_SIZE):
        vocab[f"w{i}"] = i
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    fast.save_pretrained(path)
