"""AttentionConfig: which attention backend every layer uses.

Stage 1 (used in stages 3-4). Mirrors vllm/config/attention.py (vLLM also reads the
VLLM_ATTENTION_BACKEND variable). None lets the platform pick the fastest available backend.
Next: vllm.py.
"""

from __future__ import annotations

from dataclasses import dataclass

ATTENTION_BACKENDS = ("naive", "torch", "triton", "cpu", "cuda")


@dataclass
class AttentionConfig:
    backend: str | None = None

    def __post_init__(self) -> None:
        if self.backend is not None and self.backend not in ATTENTION_BACKENDS:
            raise ValueError(
                f"attention_backend must be one of {list(ATTENTION_BACKENDS)}, got {self.backend!r}"
            )
