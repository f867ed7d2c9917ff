"""compressed-tensors: the checkpoint format llm-compressor writes. Stage 7.

Mirrors vllm/model_executor/layers/quantization/compressed_tensors/__init__.py. Read
compressed_tensors.py (the config: which layer gets which scheme), then schemes/.
"""
