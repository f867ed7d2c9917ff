"""Tokenizer loading. Stage 2. Mirrors vllm/tokenizers/registry.py.

For the default model the tokenizer was converted from the GGUF once (by prepare_default_model)
and saved as a fast tokenizer, so loading takes milliseconds instead of seconds.
"""

from __future__ import annotations

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from vllm_mini.transformers_utils.config import ModelSource


def get_tokenizer(source: ModelSource, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    if source.hf_config_dir is not None:
        return AutoTokenizer.from_pretrained(
            source.hf_config_dir, trust_remote_code=trust_remote_code
        )
    gguf = source.gguf_file
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
