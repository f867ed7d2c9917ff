"""Lesson 09 exercises: the LoRA forward, the batched shrink/expand by hand, PEFT's names.

Fill in each function, then run:  LESSON_IMPL=exercises .venv/bin/pytest lessons/09_lora
One at a time with -k: scaling | linear | shrink | expand | bgmv | key | fused. The tests compare
your answers with PEFT's own LoRA layers, with the engine's torch reference ops
(vllm_mini/lora/ops/torch_ops.py) and with the engine's adapter loader (lora/lora_model.py).
"""

from __future__ import annotations

import torch

# -------------------------------------------------------------- 1. one LoRA linear layer


def lora_scaling(lora_alpha: float, r: int, use_rslora: bool = False) -> float:
    """The factor the update B @ A is multiplied by: lora_alpha / r, or lora_alpha / sqrt(r)
    with rank-stabilized LoRA (use_rslora, Kalajdzievski 2023).

    Engine: PEFTHelper.scaling in vllm_mini/lora/peft_helper.py.
    """
    raise NotImplementedError(
        "lora_scaling: lora_alpha / r, or lora_alpha / sqrt(r) when use_rslora. Engine: PEFTHelper.scaling in lora/peft_helper.py"
    )


def lora_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    lora_alpha: float,
    use_rslora: bool = False,
) -> torch.Tensor:
    """A linear layer with one LoRA adapter, unmerged: x W^T + scaling * (x A^T) B^T.

    x [T, in], weight [out, in] (the frozen base W), lora_a [r, in], lora_b [out, r]; the rank r
    is lora_a.shape[0]. Returns [T, out]. Compute the update as shrink (x A^T: r numbers per token)
    then expand (times B^T), never as the [out, in] matrix B @ A. PEFT's lora.Linear does the same.
    """
    raise NotImplementedError(
        "lora_linear: x @ weight.T + lora_scaling(...) * ((x @ lora_a.T) @ lora_b.T). Engine: LinearWithLoRA.forward in lora/layers.py"
    )


# ------------------------------------------------------ 2. BGMV: a slot per token, by hand


def bgmv_shrink(x: torch.Tensor, lora_a: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Shrink for a batch of mixed adapters, one token at a time. Returns buf [T, R] float32.

    x [T, in]; lora_a [S, R, in]: every slot's A stacked (ranks below R zero-padded);
    indices [T]: token t's slot, or -1 for a token of the base model.
    buf[t] = lora_a[indices[t]] @ x[t], and a row of zeros where indices[t] == -1.
    Engine: bgmv_shrink in vllm_mini/lora/ops/torch_ops.py (which gathers and batches the loop).
    """
    raise NotImplementedError(
        "bgmv_shrink: for each token t with indices[t] >= 0, buf[t] = lora_a[indices[t]] @ x[t]. Engine: torch_ops.bgmv_shrink"
    )


def bgmv_expand(
    y: torch.Tensor,
    buf: torch.Tensor,
    lora_b: torch.Tensor,
    indices: torch.Tensor,
    slice_offset: int,
) -> torch.Tensor:
    """Expand for a batch of mixed adapters, into one slice of a fused output. Returns y.

    y [T, total]: the base layer's output, updated IN PLACE; buf [T, R] from bgmv_shrink;
    lora_b [S, n, R]: every slot's B for this slice (n columns, starting at slice_offset).
    y[t, off:off + n] += lora_b[indices[t]] @ buf[t]; tokens with indices[t] == -1 get nothing.
    Engine: bgmv_expand_slice in vllm_mini/lora/ops/torch_ops.py.
    """
    raise NotImplementedError(
        "bgmv_expand: for each token t with indices[t] >= 0, y[t, off:off+n] += lora_b[indices[t]] @ buf[t]. Engine: torch_ops.bgmv_expand_slice"
    )


# ------------------------------------------------- 3. PEFT names onto the fused layers


def map_peft_key(key: str) -> tuple[str, int, str]:
    """Where a tensor of a PEFT adapter goes in vllm_mini's model: (fused layer, slice, "A"/"B").

    PEFT names a tensor after the HF module it patches, with an optional "base_model.model."
    prefix and an optional ".default" before ".weight", e.g.
        "base_model.model.model.layers.3.self_attn.k_proj.lora_A.weight"
            -> ("model.layers.3.self_attn.qkv_proj", 1, "A")
    q/k/v_proj are slices 0/1/2 of qkv_proj, gate/up_proj slices 0/1 of gate_up_proj, o_proj and
    down_proj slice 0 of themselves. Anything else (lm_head, embed_tokens, a bias) is a
    ValueError. Engine: _KEY and TARGET_MODULES in lora/lora_model.py and lora/peft_helper.py.
    """
    raise NotImplementedError(
        "map_peft_key: split off the prefix, the module (q_proj...) and lora_A/lora_B; map the module to (fused, slice). Engine: LoRAModel.from_local_checkpoint"
    )
