"""The Platform interface every device implements. Mirrors vllm/platforms/interface.py.

How much memory the KV cache gets is device-specific too: an explicit budget on CPU
(platforms/cpu.py) and a profiled one on CUDA (platforms/cuda.py, worker/worker.py).
"""

from __future__ import annotations


class Platform:
    device_type: str = "cpu"

    def default_attention_backend(self, device_type: str) -> str:
        """The fastest attention backend available for `device_type`."""
        from vllm_mini.attention.ops import is_paged_attention_available

        preferred = ("cuda", "triton", "torch") if device_type == "cuda" else ("cpu", "torch")
        for name in preferred:
            if is_paged_attention_available(name):
                return name
        return "naive"
