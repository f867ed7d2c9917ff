"""Activations. Stage 2. Mirrors vllm/model_executor/layers/activation.py.

SiluAndMul takes the packed gate_up projection [.., 2 * d] and returns silu(gate) * up [.., d]:
the SwiGLU MLP of Llama, Qwen and Mistral in one op (one CUDA kernel in vLLM's csrc/libtorch_stable/activation_kernels.cu).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SiluAndMul(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = x.shape[-1] // 2
        return F.silu(x[..., :d]) * x[..., d:]
