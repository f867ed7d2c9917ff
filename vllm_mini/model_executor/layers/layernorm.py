"""RMSNorm, with the residual add fused in.

Stage 2. Mirrors vllm/model_executor/layers/layernorm.py (and csrc/libtorch_stable/layernorm_kernels.cu's
fused_add_rms_norm). Llama-style blocks compute `x = x + residual; residual = x; x = norm(x)` at
every sub-layer; doing the add inside the norm saves one pass over memory on a GPU kernel and keeps
the model code short: `hidden, residual = norm(hidden, residual)`.

Like vLLM's CustomOp, `forward_native` is the torch reference and `forward_cpu` calls one C++
kernel (csrc/cpu/layer_kernels.cpp, the role of vLLM's csrc/cpu/layernorm.cpp) when
fused_cpu_ops.py says it applies. The kernel works in place on the residual path: it overwrites
`x` and `residual`, which the decoder layer never reads again. Next: rotary_embedding.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vllm_mini.model_executor.layers import fused_cpu_ops


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size), requires_grad=False)
        self.variance_epsilon = eps

    def _norm_formula(self, x: torch.Tensor) -> torch.Tensor:
        """The formula, spelled out: x / sqrt(mean(x^2) + eps) * weight, statistics in float32.
        Rounds to x's dtype before the weight multiplies, as Hugging Face's LlamaRMSNorm does."""
        orig_dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + self.variance_epsilon)
        return self.weight * x.to(orig_dtype)

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32:
            return self._norm_formula(x)
        # One op instead of seven small ones: on CPU, per-op overhead dominates decode.
        return F.rms_norm(x, self.weight.shape, self.weight, self.variance_epsilon)

    def forward_native(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The torch reference; leaves its inputs untouched."""
        if residual is None:
            return self._norm(x)
        x = x + residual
        return self._norm(x), x

    def forward_cpu(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """One kernel call; with a residual, writes the sum into `residual` and the norm into `x`."""
        if residual is None:
            return fused_cpu_ops.rms_norm(x, self.weight, self.variance_epsilon)
        return fused_cpu_ops.fused_add_rms_norm(x, residual, self.weight, self.variance_epsilon)

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if (
            fused_cpu_ops.fused_ops_apply(x)
            and self.weight.dtype == x.dtype
            and 1 <= x.dim() <= 3
            and (residual is None or residual.dtype == x.dtype)
        ):
            return self.forward_cpu(x, residual)
        return self.forward_native(x, residual)
