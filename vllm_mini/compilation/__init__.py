"""Compilation: torch.compile of the model and the static-buffer / CUDA-graph path of decode steps.

Stage 6. Mirrors vllm/compilation/. Read wrapper.py (compile once, dynamic number of tokens,
attention as a custom op, on-disk cache), then cuda_graph.py (capture sizes, padding, persistent
buffers, capture and replay). The config is vllm_mini/config/compilation.py.
"""
