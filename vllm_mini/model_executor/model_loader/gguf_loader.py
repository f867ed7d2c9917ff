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
are expanded by `gguf.quants.dequantize`, unless the model runs the `gguf` quantization method
(stage 7, layers/quantization/gguf.py): then each 2-D tensor is yielded as its raw blocks,
`<name>.qweight` (uint8 [rows, bytes_per_row]) and `<name>.qweight_type` (the ggml type), and the
q/k row permutation moves whole rows of blocks. The GGUF's config is read by
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
    keep_blocks: bool = False,
) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, dequantized tensor) pairs; pass hf_config to skip re-reading the metadata.

    keep_blocks=True (the `gguf` quantization method): 2-D tensors come as their raw blocks,
    (name.qweight, uint8 [rows, bytes_per_row]) then (name.qweight_type, 0-d ggml type).
    """
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
        if keep_blocks and len(shape) == 2:
            yield from _raw_blocks(tensor, hf_name, shape, n_head, n_kv_head)
            continue
        array = dequantize(tensor.data, tensor.tensor_type).reshape(shape)
        if hf_name.endswith("q_proj.weight"):
            array = reverse_permute_qk(array, n_head)
        elif hf_name.endswith("k_proj.weight"):
            array = reverse_permute_qk(array, n_kv_head)
        yield hf_name, torch.from_numpy(np.array(array, dtype=np.float32)).to(dtype)


def _raw_blocks(
    tensor, hf_name: str, shape: list[int], n_head: int, n_kv_head: int
) -> Iterator[tuple[str, torch.Tensor]]:
    """One 2-D GGUF tensor as (name.qweight, [rows, bytes] uint8), (name.qweight_type, type)."""
    from vllm_mini.model_executor.layers.quantization.utils.gguf_quants import GGML_TYPES

    type_id = int(tensor.tensor_type)
    if type_id not in GGML_TYPES:
        supported = ", ".join(t.name for t in GGML_TYPES.values())
        raise ValueError(
            f"gguf: tensor {tensor.name} has type {tensor.tensor_type.name}, supported: "
            f"{supported} (dtype='float32' loads it dequantized instead)"
        )
    # The reader gives quantized tensors as [rows, bytes] uint8 and float ones as [rows, cols]
    # floats; both become one row of bytes per output row.
    blocks = np.ascontiguousarray(tensor.data).view(np.uint8).reshape(shape[0], -1)
    if hf_name.endswith("q_proj.weight"):
        blocks = reverse_permute_qk(blocks, n_head)  # whole rows move: blocks never straddle rows
    elif hf_name.endswith("k_proj.weight"):
        blocks = reverse_permute_qk(blocks, n_kv_head)
    base = hf_name.removesuffix(".weight")
    yield f"{base}.qweight", torch.from_numpy(np.array(blocks, dtype=np.uint8))
    yield f"{base}.qweight_type", torch.tensor(type_id)
