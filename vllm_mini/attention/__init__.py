"""Attention: the layer models call, the backends behind it, and the kernels behind those.

Stages 3-4. Mirrors vllm/v1/attention/ and vllm/model_executor/layers/attention/. Read layer.py first, then backends/naive.py (the reference),
then backends/paged.py and ops/ (the kernels).
"""

from vllm_mini.attention.layer import Attention

__all__ = ["Attention"]
