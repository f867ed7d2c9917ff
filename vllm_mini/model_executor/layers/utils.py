"""Prepacked oneDNN weights: the CPU fast path for float linear layers and the LM head.

Stage 2 (a CPU speed-up of the layers in linear.py). Mirrors vllm/model_executor/layers/utils.py
(`dispatch_cpu_unquantized_gemm`, which vLLM's CPU backend runs once per layer at load time).

What "prepacking" means. A GEMM kernel does not read the weight in the checkpoint's [out, in]
row-major order: its inner loop wants small tiles (say 16 or 64 output features by a few input
features) sitting next to each other in memory, so that one cache line feeds a whole vector FMA.
`F.linear` hands MKL/oneDNN the plain matrix, so the library re-tiles ("packs") the weight on
every call, or reads it with strided loads. Prepacking does that reordering ONCE, at load time
(`torch.ops.mkldnn._reorder_linear_weight`), into the blocked layout oneDNN's kernel picks for this
CPU; each forward then calls `torch.ops.mkldnn._linear_pointwise`, which reads the packed weight
as it is. These are the two ops inductor itself emits when it freezes a CPU model.

Why it pays at both batch sizes. At batch 1 (decode) each weight is read once per token, so the
step is bound by memory traffic: a packed weight is read in one contiguous pass, with no
per-call packing buffer. At batch 16 or more the same weight tile is reused by every row, the
step becomes compute-bound, and the packed tile is exactly what the FMA loop wants. Measured on
our 2-core AVX-512 CPU, 1 thread (benchmarks/RESULTS.md): fp32 per layer 2.0-2.7x at 16-128 rows;
at 1 row a small layer that sits in cache is slower (oneDNN's fixed ~10 us a call), yet the engine
gains at batch 1 too (fp32 1.36x, bf16 1.55x tok/s): there every weight comes from memory.
The price: the plain weight is kept beside the packed copy (twice the float weight memory).

`F.linear` stays the reference path: `VLLM_MINI_CPU_ONEDNN=0` (read when the model loads) keeps
it everywhere, and it is what runs on any other device, dtype, or a tensor-parallel shard.
Next: linear.py (UnquantizedLinearMethod) and vocab_parallel_embedding.py, which call this.
"""

from __future__ import annotations

import os

import torch

ONEDNN_ENV = "VLLM_MINI_CPU_ONEDNN"

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


def onednn_enabled() -> bool:
    """The switch: on unless VLLM_MINI_CPU_ONEDNN=0 (then every layer runs F.linear)."""
    return os.environ.get(ONEDNN_ENV, "1").strip() != "0" and torch.backends.mkldnn.is_available()


def can_prepack(weight: torch.Tensor, tp_size: int = 1) -> bool:
    """Whether `weight` ([out, in]) gets a oneDNN copy: CPU, fp32 or bf16, one rank, switch on."""
    if not onednn_enabled() or weight.device.type != "cpu" or weight.dim() != 2:
        return False
    # Tensor parallelism on CPU runs one process per rank on the same cores; not measured there.
    if tp_size != 1:
        return False
    if weight.dtype == torch.bfloat16:  # needs AVX-512 BF16 (or AMX) to be fast
        return torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return weight.dtype == torch.float32  # fp16: oneDNN emulates it on CPUs without AVX-512 FP16


def prepack_weight(weight: torch.Tensor) -> torch.Tensor:
    """[out, in] float weight -> the same matrix in oneDNN's blocked layout (an opaque tensor)."""
    # batch_size=None: let oneDNN pick one layout for every number of rows (a hint of 1 or 16
    # picked the same speed here), so decode and prefill share the one copy.
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), None)


def onednn_linear(
    x: torch.Tensor, packed_weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """`F.linear(x, weight, bias)` computed from `prepack_weight(weight)`."""
    if torch.compiler.is_compiling():  # dynamo must see our opaque op (see above)
        return torch.ops.vllm_mini.onednn_linear(x, packed_weight, bias)
    # Eager: call oneDNN directly; the wrapper op's dispatch costs ~5 us x 121 matmuls a step.
    return torch.ops.mkldnn._linear_pointwise(x, packed_weight, bias, "none", [], "")
