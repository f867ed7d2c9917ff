"""Prepacked weights: the CPU fast path for float linear layers and the LM head.

Stage 2 (a CPU speed-up of the layers in linear.py). Mirrors vllm/model_executor/layers/utils.py
(`dispatch_cpu_unquantized_gemm`, which vLLM's CPU backend runs once per layer at load time to
pick a kernel and repack the weight for it).

What "prepacking" means. A GEMM kernel does not read the weight in the checkpoint's [out, in]
row-major order: its inner loop wants small tiles (say 16 output features by a few input
features) sitting next to each other in memory, so that one cache line feeds a whole vector FMA.
`F.linear` hands MKL/oneDNN the plain matrix, so the library re-tiles ("packs") the weight on
every call, or reads it with strided loads. Prepacking does that reordering ONCE, at load time.

Three backends, picked by `VLLM_MINI_CPU_GEMM` (read when the model loads):
  - "dense" (the default): our own kernel, csrc/cpu/dense_gemm.cpp, on the weight repacked into
    16-column blocks (`pack_dense`): a 6-row x 64-column register tile of AVX-512 FMAs
    (`vdpbf16ps` for bfloat16). Measured on a whole SmolLM2 step's linears against oneDNN on
    its own packed weights: 1.0-1.3x at 1-64 rows, 0.96-0.99x at 256-1024 (benchmarks/RESULTS.md);
    at decode sizes oneDNN's fixed cost per call (~10 us, x 121 matmuls a step) is what we save.
  - "onednn": what vLLM's CPU backend calls (vLLM's csrc/cpu/dnnl_kernels.cpp): oneDNN's matmul on
    its blocked layout (`torch.ops.mkldnn._reorder_linear_weight` at load, then
    `torch.ops.mkldnn._linear_pointwise`; the two ops inductor emits when it freezes a CPU
    model). Also the fallback for a weight the dense kernel cannot take (out features not a
    multiple of 16, an odd bfloat16 in features, a build without AVX-512).
  - "torch": `F.linear` everywhere, the reference path. It is also what runs on any other
    device, dtype (fp16: no AVX-512 FP16 here), or a tensor-parallel shard.
The price of the first two: the plain weight is kept beside the packed copy (twice the float
weight memory), for F.linear, the embedding lookup of a tied LM head, and the HF checks.
Next: linear.py (UnquantizedLinearMethod) and vocab_parallel_embedding.py, which call this.
"""

from __future__ import annotations

import os

import torch

GEMM_ENV = "VLLM_MINI_CPU_GEMM"
BACKENDS = ("dense", "onednn", "torch")
DENSE_BLOCK_N = 16  # output columns per packed block (one AVX-512 register of floats)

try:
    from vllm_mini import _C  # noqa: F401 (importing it registers the dense_gemm operator)

    _DENSE_FAST = (
        torch.ops.vllm_mini_C.dense_gemm_fast_dtypes()
        if hasattr(torch.ops.vllm_mini_C, "dense_gemm")
        else 0
    )
except ImportError:  # kernels not built: oneDNN or F.linear
    _DENSE_FAST = 0

if _DENSE_FAST:

    @torch.library.register_fake("vllm_mini_C::dense_gemm")
    def _dense_gemm_fake(x, packed, bias, portable=False):
        return x.new_empty(x.shape[0], packed.shape[0] * DENSE_BLOCK_N)


# torch.compile: inductor lowers `mkldnn._linear_pointwise` only when the packed weight is a
# graph constant (its freezing pass made it); dynamo passes our weights as graph inputs, so we
# wrap the call in an op of our own, which inductor leaves as an opaque call. Declared with
# torch.library.Library rather than the @custom_op decorator: measured here, the decorator adds
# ~15 us per call (x 121 matmuls a step), this ~4 us.
_lib = torch.library.Library("vllm_mini", "FRAGMENT")
_lib.define("onednn_linear(Tensor x, Tensor packed_weight, Tensor? bias) -> Tensor")


def _onednn_linear_impl(
    x: torch.Tensor, packed_weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    # x: [..., in] -> [..., out]; "none" = no fused activation after the matmul.
    return torch.ops.mkldnn._linear_pointwise(x, packed_weight, bias, "none", [], "")


def _onednn_linear_fake(
    x: torch.Tensor, packed_weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], packed_weight.shape[0]))


_lib.impl("onednn_linear", _onednn_linear_impl, "CompositeExplicitAutograd")
torch.library.register_fake("vllm_mini::onednn_linear", _onednn_linear_fake, lib=_lib)


def gemm_backend() -> str:
    """The backend `VLLM_MINI_CPU_GEMM` asks for (default "dense"); a bad value is an error."""
    name = os.environ.get(GEMM_ENV, "dense").strip().lower() or "dense"
    if name not in BACKENDS:
        raise ValueError(f"{GEMM_ENV} must be one of {', '.join(BACKENDS)}; got {name!r}")
    return name


def dense_supports(weight: torch.Tensor) -> bool:
    """Whether the dense kernel takes this [out, in] weight with its vector path."""
    out_f, in_f = weight.shape
    if out_f % DENSE_BLOCK_N:
        return False
    if weight.dtype == torch.float32:
        return bool(_DENSE_FAST & 1)
    return weight.dtype == torch.bfloat16 and in_f % 2 == 0 and bool(_DENSE_FAST & 2)


def _onednn_supports(weight: torch.Tensor) -> bool:
    if not torch.backends.mkldnn.is_available():
        return False
    if weight.dtype == torch.bfloat16:  # needs AVX-512 BF16 (or AMX) to be fast
        return torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return weight.dtype == torch.float32  # fp16: oneDNN emulates it on CPUs without AVX-512 FP16


def pick_backend(weight: torch.Tensor, tp_size: int = 1) -> str:
    """The backend this weight will run with: the one asked for, else the next that takes it."""
    asked = gemm_backend()
    if asked == "torch" or weight.device.type != "cpu" or weight.dim() != 2:
        return "torch"
    # Tensor parallelism on CPU runs one process per rank on the same cores; not measured there.
    if tp_size != 1 or weight.dtype not in (torch.float32, torch.bfloat16):
        return "torch"
    if asked == "dense" and dense_supports(weight):
        return "dense"
    return "onednn" if _onednn_supports(weight) else "torch"


def pack_dense(weight: torch.Tensor) -> torch.Tensor:
    """[out, in] -> the dense kernel's blocks: float32 [out/16, in, 16], each block's 16 columns
    of one input row side by side; bfloat16 [out/16, in/2, 16, 2], each column's two weights of
    an input-row pair side by side (what one `vdpbf16ps` multiplies)."""
    w = weight.detach().contiguous()
    out_f, in_f = w.shape
    if w.dtype == torch.float32:
        return w.view(out_f // DENSE_BLOCK_N, DENSE_BLOCK_N, in_f).transpose(1, 2).contiguous()
    blocks = w.view(out_f // DENSE_BLOCK_N, DENSE_BLOCK_N, in_f // 2, 2)
    return blocks.permute(0, 2, 1, 3).contiguous()


def prepack_weight(weight: torch.Tensor, tp_size: int = 1) -> torch.Tensor | None:
    """[out, in] float weight -> its packed copy for the backend `pick_backend` chose; None when
    that backend is F.linear (the layer keeps only its plain weight)."""
    backend = pick_backend(weight, tp_size)
    if backend == "dense":
        return pack_dense(weight)
    if backend == "onednn":
        # batch_size=None: let oneDNN pick one layout for every number of rows (a hint of 1 or
        # 16 picked the same speed here), so decode and prefill share the one copy.
        return torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), None)
    return None


def dense_linear(
    x: torch.Tensor,
    packed_weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    portable: bool = False,
) -> torch.Tensor:
    """`F.linear(x, weight, bias)` computed by the dense kernel from `pack_dense(weight)`.
    `portable=True` runs its plain-loop version (tests)."""
    x2 = x.reshape(-1, x.shape[-1])
    out = torch.ops.vllm_mini_C.dense_gemm(x2, packed_weight, bias, portable)
    return out.view(*x.shape[:-1], out.shape[-1])


def onednn_linear(
    x: torch.Tensor, packed_weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """`F.linear(x, weight, bias)` computed by oneDNN from its packed copy of weight."""
    if torch.compiler.is_compiling():  # dynamo must see our opaque op (see above)
        return torch.ops.vllm_mini.onednn_linear(x, packed_weight, bias)
    # Eager: call oneDNN directly; the wrapper op's dispatch costs ~5 us x 121 matmuls a step.
    return torch.ops.mkldnn._linear_pointwise(x, packed_weight, bias, "none", [], "")


def packed_linear(
    x: torch.Tensor, packed_weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """`F.linear(x, weight, bias)` from `prepack_weight(weight)`, whichever backend packed it."""
    # oneDNN's copy keeps the [out, in] shape (an opaque "mkldnn" tensor); the dense blocks are
    # 3-D (float32) or 4-D (bfloat16). The shape, unlike `is_mkldnn`, survives torch.compile's
    # fake tensors.
    if packed_weight.dim() == 2:
        return onednn_linear(x, packed_weight, bias)
    return dense_linear(x, packed_weight, bias)
