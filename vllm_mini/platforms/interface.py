"""The Platform interface every device implements. Mirrors vllm/platforms/interface.py."""

from __future__ import annotations

import torch


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

    def default_kv_cache_bytes(self, device: torch.device) -> int:
        """KV-cache budget when the user gave none: 1 GiB unless the platform knows better."""
        return 1 << 30
