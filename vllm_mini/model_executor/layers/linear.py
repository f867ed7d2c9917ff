"""Linear layers that know how they are split across tensor-parallel ranks.

Stage 2 (sharding used in stage 8). Mirrors vllm/model_executor/layers/linear.py. Megatron-style
tensor parallelism: a ColumnParallelLinear splits the OUTPUT dimension (each rank computes a slice
of the features), a RowParallelLinear splits the INPUT dimension (each rank computes a partial sum,
all-reduced). An MLP is column-then-row, so one all-reduce per block suffices.

Each parameter carries a `weight_loader(param, loaded_weight, shard_id=None)` that takes the FULL
checkpoint tensor and copies in this rank's slice; packed layers (QKV, gate+up) also take which
piece of the pack the tensor is. Forward returns `(output, output_bias)` like vLLM, so a caller
can fuse the bias into the next op. Next: layernorm.py.
"""

from __future__ import annotations

import torch
from torch import nn

from vllm_mini.distributed import (
    get_tensor_model_parallel_rank,
    get_tensor_model_parallel_world_size,
    tensor_model_parallel_all_gather,
    tensor_model_parallel_all_reduce,
)
from vllm_mini.model_executor.layers.quantization import QuantizationConfig, QuantizeMethodBase
from vllm_mini.model_executor.layers.utils import packed_linear, prepack_weight


def divide(numerator: int, denominator: int) -> int:
    if numerator % denominator != 0:
        raise ValueError(f"{numerator} is not divisible by the tensor-parallel size {denominator}")
    return numerator // denominator


class UnquantizedLinearMethod(QuantizeMethodBase):
    """Plain weights: one [out, in] matrix, F.linear."""

    def create_weights(
        self,
        layer: nn.Module,
        input_size_per_partition: int,
        output_partition_sizes: list[int],
        params_dtype: torch.dtype,
    ) -> None:
        weight = nn.Parameter(
            torch.empty(sum(output_partition_sizes), input_size_per_partition, dtype=params_dtype),
            requires_grad=False,
        )
        layer.register_parameter("weight", weight)

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        # F.linear computes x @ W^T. With W stored row-major ([out, in], the checkpoint's layout)
        # MKL's fp32 sgemm multiplies by a transposed B; stored column-major (same shape and
        # values, other strides), W^T is a plain row-major [in, out] matrix. Measured on our
        # 2-core CPU: up to 2x faster for products of 4-40 rows when the weight sits in cache,
        # and in the engine, where each step streams every weight from memory, 2-14% more
        # throughput on mixed batches (A/B in one process); never slower.
        weight = layer.weight
        if weight.device.type == "cpu" and weight.dtype == torch.float32 and weight.dim() == 2:
            weight.data = weight.data.t().contiguous().t()
        # Like vLLM's CPU backend, go further: a copy prepacked for the GEMM kernel apply calls
        # (our dense kernel, or oneDNN; utils.py explains). The plain weight stays for F.linear.
        layer.weight_packed = prepack_weight(weight, getattr(layer, "tp_size", 1))

    def apply(
        self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        packed = getattr(layer, "weight_packed", None)  # None: not loaded yet, or switched off
        if packed is not None:
            return packed_linear(x, packed, bias)
        return torch.nn.functional.linear(x, layer.weight, bias)


class LinearBase(nn.Module):
    def __init__(
        self,
        input_size: int,
        output_size: int,
        bias: bool,
        output_partition_sizes: list[int],
        input_size_per_partition: int,
        params_dtype: torch.dtype | None = None,
        quant_config: QuantizationConfig | None = None,
        prefix: str = "",
    ) -> None:
        super().__init__()
        self.input_size = input_size
        self.output_size = output_size
        self.prefix = prefix
        self.tp_rank = get_tensor_model_parallel_rank()
        self.tp_size = get_tensor_model_parallel_world_size()
        params_dtype = params_dtype or torch.get_default_dtype()
        method = quant_config.get_quant_method(self, prefix) if quant_config else None
        self.quant_method: QuantizeMethodBase = method or UnquantizedLinearMethod()
        self.quant_method.create_weights(
            self, input_size_per_partition, output_partition_sizes, params_dtype
        )
        for param in self.parameters(recurse=False):
            if not hasattr(param, "weight_loader"):  # a method may bring its own (GGUF does)
                param.weight_loader = self.weight_loader
        if bias:
            self.bias = nn.Parameter(
                torch.zeros(sum(output_partition_sizes), dtype=params_dtype), requires_grad=False
            )
            self.bias.weight_loader = self.weight_loader
        else:
            self.register_parameter("bias", None)

    def weight_loader(self, param: nn.Parameter, loaded_weight: torch.Tensor) -> None:
        _copy_checked(param.data, loaded_weight, self.prefix)


def _copy_checked(dst: torch.Tensor, src: torch.Tensor, name: str) -> None:
    if dst.shape != src.shape:
        raise ValueError(f"{name}: checkpoint shape {tuple(src.shape)} != param {tuple(dst.shape)}")
    dst.copy_(src)


# The attributes below are set by quantization methods (base_config.py explains them); a plain
# float weight has none and gets the defaults: [out, in], nothing packed.
def _output_dim(param: torch.Tensor) -> int | None:
    return getattr(param, "output_dim", 0)


def _input_dim(param: torch.Tensor) -> int | None:
    return getattr(param, "input_dim", 1 if param.dim() > 1 else None)


def _pack_factor(param: torch.Tensor, dim: int | None) -> int:
    """How many logical values one element holds along `dim` (8 for int4 packed in int32)."""
    if dim is not None and getattr(param, "packed_dim", None) == dim:
        return param.pack_factor
    return 1


def _load_packed_shard(
    layer: LinearBase,
    param: torch.Tensor,
    loaded_weight: torch.Tensor,
    shard_index: int,
    offset: int,
    size: int,
    src_rank: int,
) -> None:
    """Place one shard (q, k, v / gate, up) of a packed layer: rows [offset, offset + size)."""
    if getattr(param, "shard_indexed", False):
        _copy_checked(param.data[shard_index], loaded_weight.reshape(()), layer.prefix)
        return
    dim = _output_dim(param)
    if dim is None:  # not split by output (e.g. GPTQ's g_idx): every shard holds the same
        _copy_checked(param.data, loaded_weight, layer.prefix)
        return
    pack = _pack_factor(param, dim)
    offset, size = offset // pack, size // pack
    src = loaded_weight.narrow(dim, src_rank * size, size)
    _copy_checked(param.data.narrow(dim, offset, size), src, layer.prefix)


class ReplicatedLinear(LinearBase):
    """Every rank holds the whole weight (small layers, or no parallelism wanted)."""

    def __init__(self, input_size: int, output_size: int, bias: bool = True, **kwargs) -> None:
        super().__init__(input_size, output_size, bias, [output_size], input_size, **kwargs)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.quant_method.apply(self, x, self.bias), None


class ColumnParallelLinear(LinearBase):
    """Y = X A with A split by columns: rank r computes Y[:, r-th slice]."""

    def __init__(
        self,
        input_size: int,
        output_size: int,
        bias: bool = True,
        gather_output: bool = False,
        output_sizes: list[int] | None = None,
        **kwargs,
    ) -> None:
        tp_size = get_tensor_model_parallel_world_size()
        self.output_sizes = output_sizes or [output_size]
        partition_sizes = [divide(s, tp_size) for s in self.output_sizes]
        super().__init__(input_size, output_size, bias, partition_sizes, input_size, **kwargs)
        self.gather_output = gather_output

    def weight_loader(self, param: nn.Parameter, loaded_weight: torch.Tensor) -> None:
        if getattr(param, "shard_indexed", False):  # an unpacked layer is its own shard 0
            _copy_checked(param.data[0], loaded_weight.reshape(()), self.prefix)
            return
        dim = _output_dim(param)
        if dim is None:
            _copy_checked(param.data, loaded_weight, self.prefix)
            return
        shard = param.data.shape[dim]
        src = loaded_weight.narrow(dim, self.tp_rank * shard, shard)
        _copy_checked(param.data, src, self.prefix)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        out = self.quant_method.apply(self, x, self.bias)
        if self.gather_output:
            out = tensor_model_parallel_all_gather(out)
        return out, None


class MergedColumnParallelLinear(ColumnParallelLinear):
    """Several column-parallel layers packed into one matmul (gate_proj + up_proj -> gate_up_proj).

    Each rank's weight is [its gate slice; its up slice], so one rank's output splits cleanly in two.
    """

    def __init__(self, input_size: int, output_sizes: list[int], bias: bool = True, **kwargs):
        super().__init__(input_size, sum(output_sizes), bias, output_sizes=output_sizes, **kwargs)

    def weight_loader(
        self, param: nn.Parameter, loaded_weight: torch.Tensor, loaded_shard_id: int | None = None
    ) -> None:
        if loaded_shard_id is None:
            raise ValueError(f"{self.prefix}: a packed weight needs its shard id (0..n-1)")
        shard = self.output_sizes[loaded_shard_id] // self.tp_size
        offset = sum(self.output_sizes[:loaded_shard_id]) // self.tp_size
        _load_packed_shard(self, param, loaded_weight, loaded_shard_id, offset, shard, self.tp_rank)


class QKVParallelLinear(ColumnParallelLinear):
    """q_proj, k_proj, v_proj packed into one matmul, split by attention head across ranks.

    With GQA there may be fewer KV heads than ranks; then each KV head is replicated on
    tp_size / num_kv_heads ranks (vLLM does the same).
    """

    def __init__(
        self,
        hidden_size: int,
        head_size: int,
        total_num_heads: int,
        total_num_kv_heads: int,
        bias: bool = True,
        **kwargs,
    ) -> None:
        tp_size = get_tensor_model_parallel_world_size()
        self.head_size = head_size
        self.num_heads = divide(total_num_heads, tp_size)
        if tp_size >= total_num_kv_heads:
            self.num_kv_heads = 1
            self.num_kv_head_replicas = divide(tp_size, total_num_kv_heads)
        else:
            self.num_kv_heads = divide(total_num_kv_heads, tp_size)
            self.num_kv_head_replicas = 1
        q_size = total_num_heads * head_size
        kv_size_total = self.num_kv_heads * tp_size * head_size  # incl. replicas
        super().__init__(
            hidden_size,
            q_size + 2 * kv_size_total,
            bias,
            output_sizes=[q_size, kv_size_total, kv_size_total],
            **kwargs,
        )

    def weight_loader(
        self, param: nn.Parameter, loaded_weight: torch.Tensor, loaded_shard_id: str | None = None
    ) -> None:
        if loaded_shard_id not in ("q", "k", "v"):
            raise ValueError(f"{self.prefix}: QKV shard id must be 'q', 'k' or 'v'")
        q_rows = self.num_heads * self.head_size
        kv_rows = self.num_kv_heads * self.head_size
        if loaded_shard_id == "q":
            offset, rows, head_rank = 0, q_rows, self.tp_rank
        else:
            offset = q_rows if loaded_shard_id == "k" else q_rows + kv_rows
            rows = kv_rows
            # Ranks that share a replicated KV head load the same slice.
            head_rank = self.tp_rank // self.num_kv_head_replicas
        index = "qkv".index(loaded_shard_id)
        _load_packed_shard(self, param, loaded_weight, index, offset, rows, head_rank)


class RowParallelLinear(LinearBase):
    """Y = X A with A split by rows: rank r holds A[r-th slice, :] and X's matching slice.

    Each rank's product is a partial sum; `reduce_results` all-reduces it into the full Y.
    """

    def __init__(
        self,
        input_size: int,
        output_size: int,
        bias: bool = True,
        reduce_results: bool = True,
        **kwargs,
    ) -> None:
        tp_size = get_tensor_model_parallel_world_size()
        super().__init__(
            input_size, output_size, bias, [output_size], divide(input_size, tp_size), **kwargs
        )
        self.reduce_results = reduce_results

    def weight_loader(self, param: nn.Parameter, loaded_weight: torch.Tensor) -> None:
        if getattr(param, "shard_indexed", False):  # one value for the whole (unpacked) layer
            _copy_checked(param.data[0], loaded_weight.reshape(()), self.prefix)
            return
        dim = _input_dim(param)
        if dim is None:  # the bias is not split; only rank 0 adds it (see forward)
            _copy_checked(param.data, loaded_weight, self.prefix)
            return
        shard = param.data.shape[dim]
        src = loaded_weight.narrow(dim, self.tp_rank * shard, shard)
        _copy_checked(param.data, src, self.prefix)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        bias = self.bias if self.tp_rank == 0 else None
        out = self.quant_method.apply(self, x, bias)
        if self.reduce_results and self.tp_size > 1:
            out = tensor_model_parallel_all_reduce(out)
        return out, None
