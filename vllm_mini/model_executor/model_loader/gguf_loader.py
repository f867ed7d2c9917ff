"""GGUF: llama.cpp's single-file format, read with the `gguf` package and dequantized.

Stage 2. vLLM's GGUF loader lived in its model_loader/ until it moved out to the separate
vllm-gguf-plugin package (it is gone from the pinned vLLM). vLLM can also run some GGUF
quantizations directly; we dequantize to float, which is what HF transformers does too.

Two things to know about a llama GGUF:
- tensor names are llama.cpp's (`blk.3.attn_q.weight`), mapped here to HF names;
- llama.cpp's converter permutes the rows of q_proj and k_proj so that its RoPE, which rotates
  ADJACENT pairs of dimensions, matches HF's, which rotates dimension i with i + d/2. We undo that
  permutation so the weights equal the original HF checkpoint's.
Quantized blocks (e.g. Q4_1: 32 weights share a float16 scale and minimum, each weight is 4 bits)
are expanded by `gguf.quants.dequantize`. The GGUF's config is read by
transformers_utils/gguf_utils.py (config resolution needs it before any weight is loaded).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from transformers import PretrainedConfig

from vllm_mini.transformers_utils.gguf_utils import gguf_to_hf_config

_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GLOBAL_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
_BLOCK = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")


def gguf_name_to_hf(name: str) -> str:
    m = _BLOCK.fullmatch(name)
    if m:
        layer, part, kind = m.groups()
        if part not in _LAYER_NAMES:
            raise ValueError(f"unknown GGUF tensor {name!r}")
        return f"model.layers.{layer}.{_LAYER_NAMES[part]}.{kind}"
    base, _, kind = name.rpartition(".")
    if base not in _GLOBAL_NAMES:
        raise ValueError(f"unknown GGUF tensor {name!r}")
    return f"{_GLOBAL_NAMES[base]}.{kind}"


def reverse_permute_qk(weight: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's rotary row permutation (rows are grouped per head)."""
    rows = weight.shape[0]
    dim = rows // n_head // 2
    w = weight.reshape(n_head, dim, 2, *weight.shape[1:])
    return w.swapaxes(2, 1).reshape(weight.shape)


def gguf_weights_iterator(
    gguf_path: str | Path,
    dtype: torch.dtype = torch.float32,
    hf_config: PretrainedConfig | None = None,
) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, dequantized tensor) pairs; pass hf_config to skip re-reading the metadata."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    reader = GGUFReader(str(gguf_path))
    config = hf_config or gguf_to_hf_config(gguf_path)
    n_head = config.num_attention_heads
    n_kv_head = getattr(config, "num_key_value_heads", None) or n_head
    for tensor in reader.tensors:
        hf_name = gguf_name_to_hf(tensor.name)
        # GGUF lists dims fastest-first (ggml order); numpy wants them the other way round.
        shape = [int(d) for d in reversed(tensor.shape.tolist())]
        array = dequantize(tensor.data, tensor.tensor_type).reshape(shape)
        if hf_name.endswith("q_proj.weight"):
            array = reverse_permute_qk(array, n_head)
        elif hf_name.endswith("k_proj.weight"):
            array = reverse_permute_qk(array, n_kv_head)
        yield hf_name, torch.from_numpy(np.array(array, dtype=np.float32)).to(dtype)
