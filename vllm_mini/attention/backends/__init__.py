"""Attention backends: the naive reference and the paged backends. Mirrors vllm/attention/backends/."""
