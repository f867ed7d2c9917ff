"""Activations. Stage 2. Mirrors vllm/model_executor/layers/activation.py.

SiluAndMul takes the packed gate_up projection [.., 2 * d] and returns silu(gate) * up [.., d]:
the SwiGLU MLP of Llama, Qwen and Mistral in one op (one CUDA kernel in vLLM's
csrc/libtorch_stable/activation_kernels.cu, one C++ kernel on its CPU backend, csrc/cpu/activation.cpp).
Here `forward_native` is the torch reference (a slice, silu and a multiply: three ops and two
temporaries) and `forward_cpu` one call into csrc/cpu/layer_kernels.cpp, chosen by
fused_cpu_ops.py. Next: layernorm.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vllm_mini.model_executor.layers import fused_cpu_ops


class SiluAndMul(nn.Module):
    def forward_native(self, x: torch.Tensor) -> torch.Tensor:
        d = x.shape[-1] // 2
        return F.silu(x[..., :d]) * x[..., d:]

    def forward_cpu(self, x: torch.Tensor) -> torch.Tensor:
        return fused_cpu_ops.silu_and_mul(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if fused_cpu_ops.fused_ops_apply(x) and x.dim() >= 1 and x.shape[-1] % 2 == 0:
            return self.forward_cpu(x)
        return self.forward_native(x)
