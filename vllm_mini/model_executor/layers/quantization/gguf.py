"""GGUF quantization: run llama.cpp's quantized blocks as they are, decoding them inside the matmul.

Stage 7. Mirrors vllm/model_executor/layers/quantization/ (the QuantizationConfig /
QuantizeMethodBase pair of base_config.py). vLLM's own GGUF method, gguf.py in that directory,
was moved out of vLLM into the separate vllm-gguf-plugin package before the pinned release, so
there is no file at the pin to read; this module does the same job on the CPU.

Without it, a GGUF model is dequantized to float32 at load (gguf_loader.py): every decoded token
then reads 4 bytes per weight. Here each linear layer keeps its weight as the file's block bytes,
a uint8 tensor [rows, bytes_per_row] plus the ggml type (utils/gguf_quants.py documents the
layouts), and `apply` calls the kernel that decodes them on the fly (utils/gguf_ops.py):
SmolLM2's Q4_1 weights cost 0.625 byte each.

Loading. The GGUF iterator yields, for each 2-D tensor, `<name>.qweight` (the blocks) and
`<name>.qweight_type` (a 0-d tensor holding the ggml type). Packed layers (qkv_proj, gate_up_proj)
receive one tensor per shard, and in a mixed file (Q4_K_M keeps some tensors in Q6_K) the shards
may have different block types, so the method's own weight loader just collects the shards;
`process_weights_after_loading` then concatenates their rows into one matrix when the types agree
(one kernel call) or keeps one matrix per shard (one call each, outputs concatenated).
The embedding decodes only the rows it looks up; a tied LM head multiplies by the same blocks.
Q4_0/Q4_1/Q8_0 parts of a float32 model run the int8-activation kernel at every token count
(csrc/cpu/gguf_gemm_q8.cpp, AVX-512 VNNI; utils/gguf_ops.py says why and decides): their blocks
are repacked once here into the kernel's groups of 16 rows (utils/gguf_q8.pack_q8, the same
bytes reordered), which replace the file's layout; the embedding keeps both, since a lookup
decodes rows. VLLM_MINI_GGUF_INT8_ACT=0 keeps the file's layout and the float kernels.
Next: csrc/cpu/gguf_gemm.cpp, the kernel.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn

from vllm_mini.model_executor.layers.quantization.base_config import (
    QuantizationConfig,
    QuantizeMethodBase,
    set_weight_attrs,
)
from vllm_mini.model_executor.layers.quantization.utils.gguf_ops import (
    gguf_dequantize,
    gguf_matmul_float,
    gguf_matmul_packed,
    int8_path,
)
from vllm_mini.model_executor.layers.quantization.utils.gguf_q8 import pack_q8
from vllm_mini.model_executor.layers.quantization.utils.gguf_quants import (
    bytes_per_row,
    ggml_type,
)


class GGUFConfig(QuantizationConfig):
    """GGUF needs no settings: each tensor's block type is in the file, next to its bytes."""

    @classmethod
    def get_name(cls) -> str:
        return "gguf"

    @classmethod
    def get_supported_act_dtypes(cls) -> list[torch.dtype]:
        # The kernel computes in float32; bfloat16 activations are widened on the way in.
        return [torch.float32, torch.bfloat16]

    def get_quant_method(self, layer: nn.Module, prefix: str) -> QuantizeMethodBase | None:
        from vllm_mini.model_executor.layers.linear import LinearBase
        from vllm_mini.model_executor.layers.vocab_parallel_embedding import (
            VocabParallelEmbedding,
        )

        if isinstance(layer, LinearBase):
            return GGUFLinearMethod()
        if isinstance(layer, VocabParallelEmbedding):
            return GGUFEmbeddingMethod()
        return None


def _shard_order(shard_id: Any) -> tuple[int, int]:
    """Rows are stacked q, k, v (string ids) or gate, up (0, 1); an unpacked layer has None."""
    if shard_id is None:
        return (0, 0)
    if isinstance(shard_id, str):
        return (1, "qkv".index(shard_id))
    return (1, int(shard_id))


class GGUFPart(NamedTuple):
    """One weight matrix of a layer: the file's blocks and/or the int8 kernel's packed groups."""

    type_id: int  # ggml type
    rows: int  # output rows N
    blocks: torch.Tensor | None  # [N, bytes] as in the file; None once packed (linear layers)
    packed: torch.Tensor | None  # [ceil(N / 16), bytes * 16] for the int8 kernel, or None


class GGUFLinearMethod(QuantizeMethodBase):
    """y = x @ dequant(blocks)^T, with the blocks kept in memory."""

    def create_weights(
        self,
        layer: nn.Module,
        input_size_per_partition: int,
        output_partition_sizes: list[int],
        params_dtype: torch.dtype,
    ) -> None:
        if getattr(layer, "tp_size", 1) != 1:
            raise ValueError(
                f"gguf: {getattr(layer, 'prefix', 'layer')}: tensor parallelism is not supported "
                f"(tp size {layer.tp_size}); use dtype='float32' to load the dequantized weights"
            )
        layer.gguf_cols = input_size_per_partition
        layer.gguf_act_dtype = params_dtype  # the model's dtype: what the embedding returns
        layer.gguf_rows = sum(output_partition_sizes)
        layer.gguf_num_shards = len(output_partition_sizes)
        # shard id -> (ggml type, [rows, bytes] blocks), filled by the loaders below.
        layer.gguf_shard_blocks = {}
        layer.gguf_shard_types = {}
        # Placeholders: the real sizes depend on each shard's block type, known only at load.
        qweight = nn.Parameter(torch.empty(0, dtype=torch.uint8), requires_grad=False)
        qweight_type = nn.Parameter(torch.empty(0, dtype=torch.uint8), requires_grad=False)
        set_weight_attrs(qweight, {"weight_loader": self._blocks_loader(layer)})
        set_weight_attrs(qweight_type, {"weight_loader": self._type_loader(layer)})
        layer.register_parameter("qweight", qweight)
        layer.register_parameter("qweight_type", qweight_type)

    @staticmethod
    def _blocks_loader(layer: nn.Module):
        def load(param: nn.Parameter, blocks: torch.Tensor, shard_id: Any = None) -> None:
            layer.gguf_shard_blocks[shard_id] = blocks.contiguous()

        return load

    @staticmethod
    def _type_loader(layer: nn.Module):
        def load(param: nn.Parameter, type_tensor: torch.Tensor, shard_id: Any = None) -> None:
            layer.gguf_shard_types[shard_id] = int(type_tensor)

        return load

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        ids = sorted(layer.gguf_shard_blocks, key=_shard_order)
        name = getattr(layer, "prefix", "layer")
        if len(ids) != layer.gguf_num_shards or set(ids) != set(layer.gguf_shard_types):
            raise ValueError(
                f"gguf: {name}: expected {layer.gguf_num_shards} shard(s) with their block types, "
                f"got blocks for {ids} and types for {sorted(layer.gguf_shard_types, key=str)}"
            )
        parts = [(layer.gguf_shard_types[i], layer.gguf_shard_blocks[i]) for i in ids]
        for type_id, blocks in parts:
            expected = bytes_per_row(type_id, layer.gguf_cols)
            if blocks.dim() != 2 or blocks.shape[1] != expected:
                raise ValueError(
                    f"gguf: {name}: {ggml_type(type_id).name} blocks of shape "
                    f"{tuple(blocks.shape)}, expected [rows, {expected}] for {layer.gguf_cols} inputs"
                )
        rows = sum(blocks.shape[0] for _, blocks in parts)
        if rows != layer.gguf_rows:
            raise ValueError(f"gguf: {name}: {rows} rows loaded, expected {layer.gguf_rows}")
        if len({type_id for type_id, _ in parts}) == 1:
            # One block type: stack the shards' rows into one matrix, so one kernel call.
            parts = [(parts[0][0], torch.cat([blocks for _, blocks in parts]))]
        layer.gguf_parts = [self._part(layer, type_id, blocks) for type_id, blocks in parts]
        # The parameters now hold the loaded weights (parameters() counts them as weight memory).
        del layer.qweight, layer.qweight_type
        for i, part in enumerate(layer.gguf_parts):
            for suffix, data in (("", part.blocks), ("_packed", part.packed)):
                if data is not None:
                    layer.register_parameter(
                        f"qweight{suffix}_{i}", nn.Parameter(data, requires_grad=False)
                    )
        del layer.gguf_shard_blocks, layer.gguf_shard_types

    # A linear layer only multiplies: once packed, the file's layout is not kept.
    keep_blocks_when_packed = False

    def _part(self, layer: nn.Module, type_id: int, blocks: torch.Tensor) -> GGUFPart:
        if not int8_path(type_id, layer.gguf_act_dtype):
            return GGUFPart(type_id, blocks.shape[0], blocks, None)
        packed = pack_q8(blocks, type_id)
        kept = blocks if self.keep_blocks_when_packed else None
        return GGUFPart(type_id, blocks.shape[0], kept, packed)

    def apply(
        self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        # x: [num_tokens, K] -> [num_tokens, sum of the parts' rows]. The path was chosen at load:
        # a packed part runs the int8 kernel, the others the float one.
        outs = [
            gguf_matmul_packed(x, p.packed, p.type_id, p.rows)
            if p.packed is not None
            else gguf_matmul_float(x, p.blocks, p.type_id)
            for p in layer.gguf_parts
        ]
        y = outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)
        return y if bias is None else y + bias


class GGUFEmbeddingMethod(GGUFLinearMethod):
    """The token table in blocks: a lookup decodes only the rows asked for."""

    # Lookups decode rows of the file's layout; a tied LM head multiplies with the packed copy.
    keep_blocks_when_packed = True

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        # The table has pad_vocab_size rows; the file has the real vocab. Padding rows are
        # all-zero bytes, which every format decodes to zeros (their logits are cut off anyway).
        blocks = layer.gguf_shard_blocks.get(None)
        if blocks is not None and blocks.shape[0] < layer.gguf_rows:
            pad = blocks.new_zeros(layer.gguf_rows - blocks.shape[0], blocks.shape[1])
            layer.gguf_shard_blocks[None] = torch.cat([blocks, pad])
        super().process_weights_after_loading(layer)

    def embedding(self, layer: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
        # input_ids: [num_tokens] -> [num_tokens, hidden]
        part = layer.gguf_parts[0]
        rows = part.blocks.index_select(0, input_ids.reshape(-1))
        out = gguf_dequantize(rows, part.type_id, layer.gguf_cols)
        return out.to(layer.gguf_act_dtype).reshape(*input_ids.shape, layer.gguf_cols)
