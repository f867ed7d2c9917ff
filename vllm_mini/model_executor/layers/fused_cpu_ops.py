"""The fused CPU kernels of the small per-layer ops, and when the layers use them. Stage 2 (issue 19).

Mirrors vllm/_custom_ops.py (Python wrappers around the compiled `torch.ops._C` kernels) and
vllm/model_executor/custom_op.py (CustomOp: each layer keeps a pure-torch `forward_native`, the
reference, and a per-platform `forward_cpu` that calls a kernel). The kernels are
csrc/cpu/layer_kernels.cpp, compiled into `vllm_mini._C` at install time, one call per op where
the torch version runs several (RMSNorm with the residual add: ~8 ops in bfloat16; rotary: ~12).
At batch 1 those ops' fixed costs, not arithmetic, dominate a decode step on a CPU.

A layer takes the kernel path when `fused_ops_apply(x)` holds:
- `vllm_mini._C` was built with these ops;
- the environment variable VLLM_MINI_CPU_FUSED_OPS is not "0" (read once, at import; set it to 0
  to run the torch reference everywhere, e.g. to A/B the speed or to rule the kernels out);
- the tensor is on the CPU, in float32 or bfloat16;
- torch.compile is not tracing: Inductor fuses the same torch ops into its own generated loops,
  as vLLM's default does (CompilationConfig.custom_ops is "none" under Inductor, so its CustomOps
  run forward_native while compiling). The ops still have fake implementations below, so a graph
  that calls them directly traces too (tests/layers/test_cpu_fused_ops.py compiles them).
Next: layernorm.py, activation.py and rotary_embedding.py, which dispatch here.
"""

from __future__ import annotations

import os

import torch

FUSED_OPS_ENV = "VLLM_MINI_CPU_FUSED_OPS"
ENABLED = os.environ.get(FUSED_OPS_ENV, "1") != "0"
_DTYPES = (torch.float32, torch.bfloat16)


def _load_kernels() -> bool:
    try:
        from vllm_mini import _C  # noqa: F401 - loading the library registers its torch ops
    except ImportError:
        return False
    return hasattr(torch.ops.vllm_mini_C, "fused_add_rms_norm")


KERNELS_AVAILABLE = _load_kernels()

if KERNELS_AVAILABLE:
    # Looked up once: each `torch.ops.vllm_mini_C.<name>` access walks the op registry again, and
    # at batch 1 a microsecond per call is a measurable share of these ops' whole cost.
    _rms_norm = torch.ops.vllm_mini_C.rms_norm
    _fused_add_rms_norm = torch.ops.vllm_mini_C.fused_add_rms_norm
    _silu_and_mul = torch.ops.vllm_mini_C.silu_and_mul
    _rotary_embedding = torch.ops.vllm_mini_C.rotary_embedding

    # The ops return nothing and write into their `Tensor(a!)` arguments, so a fake has nothing
    # to build: functionalization reads the mutations off the schema's alias annotations.
    @torch.library.register_fake("vllm_mini_C::rms_norm")
    def _rms_norm_fake(out, input, weight, eps, portable=False) -> None:
        return None

    @torch.library.register_fake("vllm_mini_C::fused_add_rms_norm")
    def _fused_add_rms_norm_fake(input, residual, weight, eps, portable=False) -> None:
        return None

    @torch.library.register_fake("vllm_mini_C::silu_and_mul")
    def _silu_and_mul_fake(out, input, portable=False) -> None:
        return None

    @torch.library.register_fake("vllm_mini_C::rotary_embedding")
    def _rotary_embedding_fake(
        positions, query, key, head_size, cos_sin_cache, is_neox, portable=False
    ) -> None:
        return None


def fused_ops_apply(x: torch.Tensor) -> bool:
    """Whether a layer given `x` should call the kernel (see the module docstring)."""
    return (
        ENABLED
        and KERNELS_AVAILABLE
        and x.dtype in _DTYPES
        and x.is_cpu
        and not torch.compiler.is_compiling()
    )


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, portable: bool = False
) -> torch.Tensor:
    """x [..., d] (1 to 3 dims, last one contiguous, any row strides) -> a new contiguous tensor."""
    out = x.new_empty(x.shape)
    _rms_norm(out, x, weight, eps, portable)
    return out


def fused_add_rms_norm(
    x: torch.Tensor,
    residual: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    portable: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """In place: residual <- x + residual, x <- rms_norm(residual). Returns (x, residual)."""
    _fused_add_rms_norm(x, residual, weight, eps, portable)
    return x, residual


def silu_and_mul(x: torch.Tensor, portable: bool = False) -> torch.Tensor:
    """x [..., 2d] -> silu(x[..., :d]) * x[..., d:], a new [..., d] tensor."""
    d = x.shape[-1] // 2
    if x.dim() == 2:  # the model's case: no reshapes (each is a microsecond at batch 1)
        out = x.new_empty(x.shape[0], d)
        _silu_and_mul(out, x, portable)
        return out
    out = x.new_empty((*x.shape[:-1], d))
    _silu_and_mul(out.view(-1, d), x.reshape(-1, 2 * d), portable)
    return out


def rotary_embedding(
    positions: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    head_size: int,
    cos_sin_cache: torch.Tensor,
    is_neox: bool = True,
    portable: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate query and key [tokens, heads * head_size] in place (each token's row contiguous,
    rows any stride apart); cos_sin_cache [max_position, rotary_dim] holds cos, then sin."""
    _rotary_embedding(positions, query, key, head_size, cos_sin_cache, is_neox, portable)
    return query, key
