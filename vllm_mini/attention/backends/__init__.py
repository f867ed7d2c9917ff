"""Attention backends: the naive reference and the paged backends.

Mirrors vllm/v1/attention/backends/. The list of backends is in attention/selector.py.
"""
