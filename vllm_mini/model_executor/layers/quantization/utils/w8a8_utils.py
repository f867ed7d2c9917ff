"""8-bit weights times 8-bit activations (W8A8): int8 and float8 quantizers and matmuls. Stage 7.

Mirrors vllm/model_executor/layers/quantization/utils/w8a8_utils.py. Both W8A8 schemes store
each weight as an 8-bit code times a float scale, one scale per output channel ([out, 1]) or per
tensor, and quantize activations at run time, one scale per token ("dynamic per-token"):

    x[t, :] ~ xq[t, :] * sx[t]        W[o, :] ~ wq[o, :] * sw[o]
    y[t, o] = sum_i x[t, i] W[o, i] ~ sx[t] * sw[o] * sum_i xq[t, i] wq[o, i]

so the inner sum runs on 8-bit codes (int8: exact in int32, `torch._int_mm`) and the two
scales are applied once per output element. int8 codes are round(v / s) in [-128, 127] with
s = max|v| / 127; float8_e4m3fn codes are v / s rounded to the nearest e4m3 value, s = max|v| /
448 (e4m3's largest finite value). Each fast function has its float reference here; the tests
compare them.

On a CPU the two halves around the int8 matmul, quantizing x and scaling the int32 sums back,
are one C++ pass each (csrc/cpu/int8_quant.cpp; vLLM: csrc/cpu/dnnl_kernels.cpp) instead of ~6
torch ops each; they give the torch versions' results bit for bit. VLLM_MINI_CPU_FUSED_OPS=0 (the
switch of the other small-op kernels) keeps the torch versions. Next:
compressed_tensors/schemes/compressed_tensors_w8a8_int8.py.
"""

from __future__ import annotations

import torch

from vllm_mini.model_executor.layers import fused_cpu_ops
from vllm_mini.model_executor.layers.quantization.utils import fp8_ops

INT8_MAX = 127.0
FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8_DTYPE).max  # 448.0
_TINY = 1e-12  # an all-zero row gets this scale instead of 0 (its codes are 0 either way)


# ---- int8 ---------------------------------------------------------------------------------------


def _load_kernels() -> bool:
    return fused_cpu_ops.KERNELS_AVAILABLE and hasattr(torch.ops.vllm_mini_C, "scaled_int8_quant")


INT8_KERNELS_AVAILABLE = _load_kernels()

if INT8_KERNELS_AVAILABLE:
    _quant_kernel = torch.ops.vllm_mini_C.scaled_int8_quant
    _epilogue_kernel = torch.ops.vllm_mini_C.int8_scaled_mm_epilogue
    _linear_kernel = torch.ops.vllm_mini_C.int8_linear

    @torch.library.register_fake("vllm_mini_C::int8_linear")
    def _linear_fake(x, w_t, w_scale, bias, qmax=127.0):
        return x.new_empty(x.shape[0], w_t.shape[1])

    # They write into their `Tensor(a!)` arguments and return nothing (see fused_cpu_ops.py).
    @torch.library.register_fake("vllm_mini_C::scaled_int8_quant")
    def _quant_fake(out, scale, input, qmax=127.0, portable=False) -> None:
        return None

    @torch.library.register_fake("vllm_mini_C::int8_scaled_mm_epilogue")
    def _epilogue_fake(out, acc, x_scale, w_scale, bias, portable=False) -> None:
        return None


def _kernel_applies(x: torch.Tensor) -> bool:
    return (
        INT8_KERNELS_AVAILABLE
        and fused_cpu_ops.fused_ops_apply(x)
        and x.dim() == 2
        and x.stride(-1) == 1
    )


def scaled_int8_quant(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic symmetric per-token quantization. x: [T, K] -> (int8 [T, K], float32 [T, 1])."""
    if _kernel_applies(x):
        q = torch.empty(x.shape, dtype=torch.int8)
        scale = torch.empty(x.shape[0], 1, dtype=torch.float32)
        _quant_kernel(q, scale, x, INT8_MAX)
        return q, scale
    return scaled_int8_quant_reference(x)


def scaled_int8_quant_reference(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The torch version of scaled_int8_quant (and the kernel's oracle)."""
    x = x.float()
    scale = x.abs().amax(dim=-1, keepdim=True).clamp(min=_TINY) / INT8_MAX
    q = torch.round(x / scale).clamp(-128, 127).to(torch.int8)
    return q, scale


def quantize_weight_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Round-to-nearest per-channel int8 weights. w: [N, K] -> (int8 [N, K], float32 [N, 1])."""
    return scaled_int8_quant(w)


def int8_scaled_mm(
    xq: torch.Tensor,
    x_scale: torch.Tensor,
    w_t: torch.Tensor,
    w_scale: torch.Tensor,
    out_dtype: torch.dtype,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """y = (xq @ w_t) * x_scale * w_scale (+ bias). xq: int8 [T, K], w_t: int8 [K, N].

    The int8 x int8 products are summed in int32 by `torch._int_mm` (oneDNN's VNNI kernels on
    an x86 CPU), which never overflows for K < 2^17. w_scale: [1, N] per channel or [] per tensor.
    """
    acc = torch._int_mm(xq, w_t)  # [T, N] int32
    if (
        INT8_KERNELS_AVAILABLE
        and fused_cpu_ops.ENABLED
        and acc.is_cpu
        and out_dtype in (torch.float32, torch.bfloat16)
        and (bias is None or bias.dtype in (torch.float32, torch.bfloat16))
        and x_scale.dtype == w_scale.dtype == torch.float32
        and not torch.compiler.is_compiling()
    ):
        y = torch.empty(acc.shape, dtype=out_dtype)
        _epilogue_kernel(y, acc, x_scale.contiguous(), w_scale.contiguous(), bias)
        return y
    return int8_mm_epilogue_reference(acc, x_scale, w_scale, out_dtype, bias)


def int8_linear(
    x: torch.Tensor, w_t: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """A W8A8 layer: y = int8_scaled_mm(*scaled_int8_quant(x), w_t, w_scale, x.dtype, bias).
    x: [T, K] float; w_t: int8 [K, N]; w_scale: float32 [1, N] or []. On a CPU one C++ call
    runs all three steps (same results: the same kernels, with `torch._int_mm` in between)."""
    if (
        _kernel_applies(x)
        and w_scale.dtype == torch.float32
        and w_scale.is_contiguous()
        and (bias is None or (bias.dtype in (torch.float32, torch.bfloat16) and bias.dim() == 1))
    ):
        return _linear_kernel(x, w_t, w_scale, bias, INT8_MAX)
    xq, x_scale = scaled_int8_quant(x)
    return int8_scaled_mm(xq, x_scale, w_t, w_scale, x.dtype, bias)


def int8_mm_epilogue_reference(
    acc: torch.Tensor,
    x_scale: torch.Tensor,
    w_scale: torch.Tensor,
    out_dtype: torch.dtype,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """The torch version of int8_scaled_mm's second half: int32 sums -> scaled floats."""
    y = acc.to(torch.float32) * x_scale * w_scale
    if bias is not None:
        y = y + bias.float()
    return y.to(out_dtype)


def int8_linear_reference(
    x: torch.Tensor, wq: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """The same product in float32 from dequantized codes: the oracle for int8_scaled_mm.

    wq: int8 [N, K]; w_scale: [N, 1] or a scalar. Activations go through the same per-token
    rounding, so only the summation order differs from the int32 kernel.
    """
    xq, x_scale = scaled_int8_quant_reference(x)
    y = (xq.float() * x_scale) @ (wq.float() * w_scale.float().reshape(-1, 1)).t()
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


# ---- float8 (e4m3fn) ----------------------------------------------------------------------------


def scaled_fp8_quant(
    x: torch.Tensor, scale: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """float8_e4m3fn codes of x. scale None: dynamic per row ([T, 1]); else that (static) scale.

    The division result is clamped to +-448 first: e4m3fn has no infinity, and a value past
    448 would otherwise become NaN.
    """
    x = x.float()
    if scale is None:
        scale = x.abs().amax(dim=-1, keepdim=True).clamp(min=_TINY) / FP8_MAX
    q = (x / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return q, scale.float()


def quantize_weight_fp8(
    w: torch.Tensor, per_channel: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """w: [N, K] -> (float8 [N, K], float32 [N, 1] per channel, or [] for one scale per tensor)."""
    if per_channel:
        return scaled_fp8_quant(w)
    scale = w.float().abs().amax().clamp(min=_TINY) / FP8_MAX
    return scaled_fp8_quant(w, scale)


def dequantize_fp8(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """codes * scale in float32, returned as `dtype` ([N, K] with [N, 1] or [] scales)."""
    return (q.to(torch.float32) * scale.float()).to(dtype)


def fp8_scaled_mm(
    x: torch.Tensor,
    w_t: torch.Tensor,
    w_scale: torch.Tensor,
    out_dtype: torch.dtype,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """W8A8 FP8: quantize x per token, multiply fp8 x fp8 with `torch._scaled_mm`.

    w_t: float8 [K, N] (a transposed view of the [N, K] weight: the layout _scaled_mm wants);
    w_scale: [1, N] per channel or a scalar. Fast where the hardware multiplies fp8 (NVIDIA
    sm89+); torch also runs it on a CPU, but by converting every element, so the CPU path of
    the schemes runs weight-only instead (finalize_fp8_linear; utils/fp8_ops.py).
    """
    xq, x_scale = scaled_fp8_quant(x)
    n = w_t.shape[1]
    scale_b = w_scale.float().reshape(1, -1).expand(1, n).contiguous()
    y = torch._scaled_mm(xq, w_t, scale_a=x_scale, scale_b=scale_b, out_dtype=torch.float32)
    if bias is not None:
        y = y + bias.float()
    return y.to(out_dtype)


def fp8_linear_reference(
    x: torch.Tensor, wq: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """W8A8 FP8 in float32: per-token fp8 rounding of x times the dequantized weight."""
    xq, x_scale = scaled_fp8_quant(x)
    w = dequantize_fp8(wq, w_scale.float().reshape(-1, 1), torch.float32)
    y = (xq.float() * x_scale) @ w.t()
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


def fp8_matmul_supported(device: torch.device) -> bool:
    """Whether this device multiplies fp8 in hardware (NVIDIA Ada/Hopper and newer: sm89+).

    On other devices the W8A8 FP8 methods run weight-only: activations stay in their float
    dtype, and on a CPU the fp8 codes go to the C++ kernel of fp8_ops.py (vLLM's fallback is the
    W8A16 Marlin kernel; compressed_tensors_w8a16_fp8.py).
    """
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


def quantize_with_scale(x: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Codes of x for a given scale, in int8 or float8_e4m3fn (static quantization)."""
    if dtype == torch.int8:
        return torch.round(x.float() / scale).clamp(-128, 127).to(torch.int8)
    if dtype == FP8_DTYPE:
        return scaled_fp8_quant(x, scale)[0]
    raise ValueError(f"quantize_with_scale: dtype must be int8 or float8_e4m3fn; got {dtype}")


def requantize_with_max_scale(
    weight: torch.Tensor, weight_scale: torch.Tensor, logical_widths: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """One per-tensor scale for a fused layer whose shards (q, k, v) came with one each.

    The fused matmul can apply only one scale to all its rows, so every shard is dequantized
    with its own scale and quantized again with the largest: no shard's values can then exceed
    the code range. The shard that had the largest scale keeps its codes exactly; the others
    lose a little precision. weight: [sum(widths), K] int8 or fp8 codes; weight_scale:
    [num_shards]. Returns (scale [], codes). (vLLM: requantize_with_max_scale in w8a8_utils.py.)
    """
    max_scale = weight_scale.float().max()
    out = torch.empty_like(weight)
    start = 0
    for shard, width in enumerate(logical_widths):
        rows = weight[start : start + width].to(torch.float32) * weight_scale[shard].float()
        out[start : start + width] = quantize_with_scale(rows, max_scale, weight.dtype)
        start += width
    return max_scale, out


# ---- the fp8 linear kernel, chosen once per layer after loading ---------------------------------


def finalize_fp8_linear(
    layer: torch.nn.Module,
    codes: torch.Tensor,
    scale: torch.Tensor,
    dtype: torch.dtype,
    weight_only: bool = False,
) -> None:
    """Store an fp8 weight (codes [N, K], scale [N, 1] or []) the way apply_fp8_linear runs it.

    With an fp8 matmul (sm89+): the codes transposed ([K, N], _scaled_mm's operand) and the
    scale as a [1, N] row. Without one the layer runs weight-only (also with `weight_only`, a
    W8A16 checkpoint, whatever the device): on a CPU with vllm_mini._C, the codes stay fp8
    (1 byte a weight) next to a float32 scale ([N] or [1]) for the C++ kernel (fp8_ops.py);
    elsewhere, or with VLLM_MINI_CPU_FP8_KERNEL=0, the weight is dequantized once to `dtype`,
    stored column-major like UnquantizedLinearMethod's (linear.py says why), and has no scale.
    """
    layer.fp8_cpu_kernel = False
    if fp8_matmul_supported(codes.device) and not weight_only:
        layer.weight = torch.nn.Parameter(codes.t(), requires_grad=False)
        layer.weight_scale = torch.nn.Parameter(scale.reshape(1, -1), requires_grad=False)
        layer.fp8_weight_only = False
        return
    layer.fp8_weight_only = True
    if fp8_ops.use_cpu_kernel(codes.device):
        layer.weight = torch.nn.Parameter(codes.contiguous(), requires_grad=False)
        layer.weight_scale = torch.nn.Parameter(
            scale.float().reshape(-1).contiguous(), requires_grad=False
        )
        layer.fp8_cpu_kernel = True
        return
    weight = dequantize_fp8(codes, scale.reshape(-1, 1), dtype)
    if weight.device.type == "cpu":
        weight = weight.t().contiguous().t()
    layer.weight = torch.nn.Parameter(weight, requires_grad=False)
    layer.weight_scale = None


def apply_fp8_linear(
    layer: torch.nn.Module, x: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """y = x @ W^T (+ bias) for a layer finalize_fp8_linear prepared. x: [..., K]."""
    if layer.fp8_cpu_kernel:
        return fp8_ops.fp8_matmul(x, layer.weight, layer.weight_scale, bias)
    if layer.fp8_weight_only:
        return torch.nn.functional.linear(x, layer.weight, bias)
    shape = x.shape
    y = fp8_scaled_mm(x.reshape(-1, shape[-1]), layer.weight, layer.weight_scale, x.dtype, bias)
    return y.reshape(*shape[:-1], y.shape[-1])
