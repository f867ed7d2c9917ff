"""LoRA's two batched ops, shrink and expand (stage 9). Mirrors vllm/lora/ops/.

torch_ops.py is the reference, read it first; triton_ops.py computes the same with Triton
kernels (run by Triton's interpreter on CPU in the tests) and is cross-checked against it.
"""
