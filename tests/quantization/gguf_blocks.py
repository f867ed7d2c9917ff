"""Synthetic GGUF blocks of every type we decode, for the dequantizer and kernel tests.

The 32-weight formats are made by quantizing random weights with `gguf.quants.quantize` (the
`gguf` package writes them like llama.cpp does). It cannot write K-quants, but any bytes are a
valid K-quant block once its float16 scales are finite, so those are random bytes with small
random scales written over the scale fields.
"""

from __future__ import annotations

import numpy as np
import torch
from gguf import GGMLQuantizationType
from gguf.quants import quantize

from vllm_mini.model_executor.layers.quantization.utils.gguf_quants import GGML_TYPE_BY_NAME

QUANTIZED_TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K"]
FLOAT_TYPES = ["F32", "F16", "BF16"]
# Byte offsets of each K-quant's float16 fields (d, and dmin where there is one).
_K_SCALE_FIELDS = {"Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208]}


def make_blocks(type_name: str, rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    """uint8 [rows, bytes_per_row] holding `rows` x `cols` weights of the given type."""
    rng = np.random.default_rng(seed)
    t = GGML_TYPE_BY_NAME[type_name]
    if type_name in _K_SCALE_FIELDS:
        blocks = rng.integers(0, 256, size=(rows * cols // t.block_size, t.type_size))
        blocks = blocks.astype(np.uint8)
        for offset in _K_SCALE_FIELDS[type_name]:
            scale = (rng.standard_normal(blocks.shape[0]) * 1e-3).astype(np.float16)
            blocks[:, offset : offset + 2] = scale.view(np.uint8).reshape(-1, 2)
        return torch.from_numpy(blocks.reshape(rows, -1))
    weights = rng.standard_normal((rows, cols)).astype(np.float32) * 0.05
    if type_name == "F32":
        return torch.from_numpy(weights.view(np.uint8).reshape(rows, -1).copy())
    if type_name == "F16":
        return torch.from_numpy(weights.astype(np.float16).view(np.uint8).reshape(rows, -1))
    packed = quantize(weights, GGMLQuantizationType[type_name])
    return torch.from_numpy(np.ascontiguousarray(packed).view(np.uint8).reshape(rows, -1))
