"""Helpers shared by the quantization methods (packing, reference quantizers). Stage 7.

Mirrors vllm/model_executor/layers/quantization/utils/. Start with quant_utils.py.
"""
