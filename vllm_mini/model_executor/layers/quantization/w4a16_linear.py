"""What GPTQ, AWQ and compressed-tensors W4A16 share once the weights are loaded. Stage 7.

Mirrors vllm/model_executor/kernels/linear/mixed_precision/MPLinearKernel.py (vLLM's
"mixed-precision linear kernel": int weights times float activations, chosen per platform).
The three methods differ only in what their checkpoints look like; each turns its tensors
into the canonical `Int4Weight` (utils/w4a16_formats.py) and calls `finish_loading`, which
repacks into the kernels' layout (utils/w4a16_layout.py) and drops the checkpoint tensors.
`w4a16_linear` then computes y = x @ W^T on whichever kernel the device has:

- CPU: the C++ kernel (cpu_w4a16.py), which dequantizes each 4-bit group as it streams it,
  for every batch size. A decode step reads 8x fewer weight bytes than float32, which is what
  makes it faster. (Dequantizing the whole weight per call and handing it to MKL's GEMM was
  tried for prefill-sized batches: 5-100x slower than the kernel on SmolLM2's shapes, even at
  512 rows, because writing the float matrix costs more than the product saves.)
- CUDA: the Triton kernel (triton_w4a16.py).
- No kernel built: the torch reference (dequantize, then F.linear): slow but correct.

Next: gptq.py, awq.py, compressed_tensors/schemes/compressed_tensors_wNa16.py.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from vllm_mini.model_executor.layers.quantization.base_config import set_weight_attrs
from vllm_mini.model_executor.layers.quantization.cpu_w4a16 import (
    CPU_KERNEL_AVAILABLE,
    w4a16_gemm_cpu,
)
from vllm_mini.model_executor.layers.quantization.utils.quant_utils import Int4Weight
from vllm_mini.model_executor.layers.quantization.utils.w4a16_layout import (
    W4A16KernelWeights,
    dequantize_kernel_weights,
    pack_for_kernel,
)


def add_param(
    layer: nn.Module, method: str, name: str, shape: tuple[int, ...], dtype: torch.dtype, **attrs
) -> nn.Parameter:
    """Register an empty checkpoint tensor on `layer` with its loader attributes.

    The layer's own weight loader places it (by the attributes); a wrapper prefixes its errors
    with the method and the tensor's name, so a checkpoint of the wrong shape says which.
    """
    param = nn.Parameter(torch.empty(shape, dtype=dtype), requires_grad=False)
    set_weight_attrs(param, attrs)

    def load(param: nn.Parameter, loaded: torch.Tensor, *shard_id: object) -> None:
        try:
            layer.weight_loader(param, loaded, *shard_id)
        except (ValueError, RuntimeError) as e:  # RuntimeError: too small to slice
            raise ValueError(f"{method}: {name}: {e}") from e

    param.weight_loader = load
    layer.register_parameter(name, param)
    return param


def same_for_every_shard_loader(method: str, layer: nn.Module) -> Callable:
    """Loader for a tensor that q/k/v (or gate/up) each bring but must agree on: g_idx.

    Act-order sorts input columns by a Hessian built from the layer's INPUT, and q, k, v read
    the same input, so real checkpoints give them the same g_idx; one layout for the fused
    matmul needs that. The loader checks it instead of silently keeping the last shard's.
    """

    def load(param: nn.Parameter, loaded: torch.Tensor, shard_id: object = None) -> None:
        loaded = loaded.to(param.dtype)
        if shard_id is None:
            layer.weight_loader(param, loaded)  # row-parallel layers slice it by input
        elif getattr(param, "w4a16_loaded", False):
            if not torch.equal(param.data, loaded):
                raise ValueError(
                    f"{method}: {layer.prefix}: shard {shard_id!r} has a different g_idx than "
                    "the shards loaded before it; a fused layer needs one column order"
                )
        else:
            if param.shape != loaded.shape:
                raise ValueError(
                    f"{method}: {layer.prefix}: g_idx has shape {tuple(loaded.shape)}, "
                    f"expected {tuple(param.shape)}"
                )
            param.data.copy_(loaded)
        param.w4a16_loaded = True

    return load


def finish_loading(layer: nn.Module, weight: Int4Weight, method: str, names: list[str]) -> None:
    """Repack the canonical weight for the kernels, drop the checkpoint's tensors `names`.

    The kernel tensors become parameters `w4a16_qweight`, `w4a16_scales`, `w4a16_zero_scales`
    (so counting a model's parameter bytes counts what a decode step reads); `layer.w4a16`
    bundles them, with the act-order permutation, for `w4a16_linear`.
    """
    device = getattr(layer, names[0]).device
    kw = pack_for_kernel(weight, method)
    for name in names:
        delattr(layer, name)
    tensors = {}
    for name in ("qweight", "scales", "zero_scales"):
        param = nn.Parameter(getattr(kw, name).to(device), requires_grad=False)
        layer.register_parameter(f"w4a16_{name}", param)
        tensors[name] = param.data
    perm = None if kw.perm is None else kw.perm.to(device)
    layer.w4a16 = W4A16KernelWeights(
        **tensors, perm=perm, out_features=kw.out_features, group_size=kw.group_size
    )


def w4a16_linear(
    x: torch.Tensor, kw: W4A16KernelWeights, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """y = x @ W^T (+ bias) for x [..., K] -> [..., N], in x's dtype."""
    x2 = x.reshape(-1, x.shape[-1])
    if kw.perm is not None:  # act-order: x's columns in the order the groups were sorted into
        x2 = x2.index_select(1, kw.perm)
    if x2.is_cuda:
        from vllm_mini.model_executor.layers.quantization.triton_w4a16 import w4a16_gemm_triton

        y = w4a16_gemm_triton(x2, kw)
    elif CPU_KERNEL_AVAILABLE:
        y = w4a16_gemm_cpu(x2, kw)
    else:  # the torch reference: dequantize (columns back in checkpoint order), F.linear
        w = dequantize_kernel_weights(kw).to(x.dtype)
        return _finish(torch.nn.functional.linear(x.reshape(-1, x.shape[-1]), w, bias), x)
    if y.shape[1] != kw.out_features:  # padding columns of the kernel layout
        y = y[:, : kw.out_features]
    if bias is not None:
        y = y + bias
    return _finish(y, x)


def _finish(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return y.reshape(*x.shape[:-1], y.shape[-1])
