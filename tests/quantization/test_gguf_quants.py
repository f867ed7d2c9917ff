"""The torch GGUF dequantizer is bit-exact with the `gguf` package's, format by format.

gguf.quants.dequantize (numpy) is the peer: it is what HF transformers and our float loader use.
Checked on synthetic blocks of every supported type and on real tensors of the default SmolLM2
file (Q4_1 layers and the Q8_0 embedding).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize as gguf_dequantize

from tests.quantization.gguf_blocks import FLOAT_TYPES, QUANTIZED_TYPES, make_blocks
from vllm_mini.model_executor.layers.quantization.utils.gguf_quants import (
    GGML_TYPE_BY_NAME,
    bytes_per_row,
    dequantize,
    ggml_type,
)


@pytest.mark.parametrize("type_name", QUANTIZED_TYPES + FLOAT_TYPES)
def test_dequantize_is_bit_exact_with_gguf_package(type_name):
    cols = 512  # two K-quant super-blocks, sixteen 32-weight blocks
    blocks = make_blocks(type_name, rows=6, cols=cols, seed=1)
    type_id = GGML_TYPE_BY_NAME[type_name].type_id
    assert blocks.shape == (6, bytes_per_row(type_id, cols))
    ours = dequantize(blocks, type_id)
    theirs = gguf_dequantize(blocks.numpy(), GGMLQuantizationType[type_name])
    assert ours.dtype == torch.float32 and ours.shape == (6, cols)
    assert torch.equal(ours, torch.from_numpy(np.asarray(theirs, dtype=np.float32)))


def test_dequantize_default_model_tensors_bit_exact(smollm2_gguf):
    reader = GGUFReader(str(smollm2_gguf))
    wanted = {"token_embd.weight", "blk.0.attn_q.weight", "blk.29.ffn_down.weight"}
    seen = set()
    for tensor in reader.tensors:
        if tensor.name not in wanted:
            continue
        seen.add(tensor.tensor_type.name)
        blocks = torch.from_numpy(np.array(tensor.data))
        ours = dequantize(blocks, int(tensor.tensor_type))
        theirs = gguf_dequantize(tensor.data, tensor.tensor_type).reshape(ours.shape)
        assert torch.equal(ours, torch.from_numpy(theirs)), tensor.name
    assert seen == {"Q8_0", "Q4_1"}


def test_unsupported_type_names_the_supported_ones():
    with pytest.raises(ValueError, match="ggml type 16 is not supported; supported: F32, .*Q6_K"):
        ggml_type(16)  # IQ2_XXS


def test_k_quant_rows_must_be_whole_super_blocks():
    with pytest.raises(ValueError, match="Q4_K needs rows of a multiple of 256, got 576"):
        bytes_per_row(GGML_TYPE_BY_NAME["Q4_K"].type_id, 576)
