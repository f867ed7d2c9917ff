"""The one layout every W4A16 kernel here reads, and the repacking into it. Stage 7.

Mirrors the repacking step of vllm/model_executor/kernels/linear/mixed_precision/cpu.py
(`process_weights_after_loading`: vLLM also turns GPTQ, AWQ and compressed-tensors weights into
one blocked layout for its CPU kernel). Checkpoints arrive in three layouts (w4a16_formats.py);
the loaders keep them as they are, then `process_weights_after_loading` calls `pack_for_kernel`
once, and the forward pass only ever sees `W4A16KernelWeights`:

- `qweight` uint8 [N/16, K/2, 16]: output columns in blocks of 16; in block b, byte (p, j) holds
  the code of (input row 2p, column 16b + j) in its low nibble and of row 2p + 1 in its high
  nibble. One block's bytes are contiguous, so a kernel streams them front to back.
- `scales`, `zero_scales` float32 [N/16, G, 16]: the scale and zero * scale of each group and
  column, so W[n, k] = q * scale - zero_scale.
- `perm` int64 [K] or None: act-order. GPTQ's desc_act puts input column k in group g_idx[k],
  so a group's columns are scattered. Sorting the columns by group (and x's columns the same
  way at run time: x[:, perm]) makes every group a contiguous run again, which the kernels need
  (vLLM's Marlin and exllama kernels sort the same way).

N is padded to a multiple of 16 with zero columns; `out_features` says how many are real. Next:
the kernels that read this: csrc/cpu/w4a16_gemm.cpp and ../triton_w4a16.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vllm_mini.model_executor.layers.quantization.utils.quant_utils import Int4Weight

BLOCK_N = 16


@dataclass
class W4A16KernelWeights:
    qweight: torch.Tensor  # uint8 [N_pad/16, K/2, 16]
    scales: torch.Tensor  # float32 [N_pad/16, G, 16]
    zero_scales: torch.Tensor  # float32 [N_pad/16, G, 16]
    perm: torch.Tensor | None  # int64 [K]: x[:, perm] puts every group's columns together
    out_features: int  # N (the real columns; the rest is padding)
    group_size: int

    @property
    def in_features(self) -> int:
        return self.qweight.shape[1] * 2


def pack_for_kernel(weight: Int4Weight, method: str = "w4a16") -> W4A16KernelWeights:
    """Canonical (quant_utils.Int4Weight) -> the kernel layout described above."""
    q = weight.q.contiguous()
    scales, zeros = weight.scales.float().contiguous(), weight.zeros.float().contiguous()
    n, k = q.shape
    groups = scales.shape[1]
    group_size = k // groups
    perm = None
    if weight.g_idx is not None:
        perm = torch.argsort(weight.g_idx.long(), stable=True)
        if not torch.equal(weight.g_idx.long()[perm], torch.arange(k) // group_size):
            raise ValueError(
                f"{method}: g_idx must put exactly {group_size} input columns in each of the "
                f"{groups} groups (act-order); this checkpoint's groups have other sizes"
            )
        q = q[:, perm]
    n_pad = -(-n // BLOCK_N) * BLOCK_N
    if n_pad != n:  # zero codes and zero scales: padded columns compute 0
        q = torch.cat([q, q.new_zeros(n_pad - n, k)])
        scales = torch.cat([scales, scales.new_zeros(n_pad - n, groups)])
        zeros = torch.cat([zeros, zeros.new_zeros(n_pad - n, groups)])
    # q [N, K] -> [N/16, 16, K/2, 2] -> bytes [N/16, K/2, 16]: low nibble even k, high odd k.
    pairs = q.view(n_pad // BLOCK_N, BLOCK_N, k // 2, 2).permute(0, 2, 1, 3)
    qweight = (pairs[..., 0] | (pairs[..., 1] << 4)).to(torch.uint8).contiguous()

    def blocked(t: torch.Tensor) -> torch.Tensor:  # [N, G] -> [N/16, G, 16]
        return t.view(n_pad // BLOCK_N, BLOCK_N, groups).transpose(1, 2).contiguous()

    return W4A16KernelWeights(
        qweight, blocked(scales), blocked(zeros * scales), perm, n, group_size
    )


def dequantize_kernel_weights(kw: W4A16KernelWeights) -> torch.Tensor:
    """The float32 [N, K] weight back from the kernel layout, columns in checkpoint order.

    The torch path of `apply` when no kernel is available, and a check of the repacking.
    """
    nb, half_k, _ = kw.qweight.shape
    b = kw.qweight.to(torch.int32)
    codes = torch.stack([b & 0xF, b >> 4], dim=-1)  # [N/16, K/2, 16, 2]
    codes = codes.permute(0, 2, 1, 3).reshape(nb * BLOCK_N, half_k * 2).float()  # [N_pad, K]

    def per_column(t: torch.Tensor) -> torch.Tensor:  # [N/16, G, 16] -> [N_pad, K]
        per_group = t.transpose(1, 2).reshape(nb * BLOCK_N, -1)
        return per_group.repeat_interleave(kw.group_size, dim=1)

    w = codes * per_column(kw.scales) - per_column(kw.zero_scales)
    if kw.perm is not None:  # undo the act-order sort: column perm[i] was moved to i
        w = w[:, torch.argsort(kw.perm)]
    return w[: kw.out_features]
