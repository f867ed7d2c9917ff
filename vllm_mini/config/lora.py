"""LoRAConfig: how many adapters a step may mix, and how big they may be.

Stage 9. Mirrors vllm/config/lora.py. LoRA weights live in fixed slots next to each target layer
(vllm_mini/lora/layers.py): `max_loras` slots, each sized for `max_lora_rank`, allocated once, so
a step can mix at most max_loras distinct adapters (the scheduler enforces it) and an adapter of
a higher rank cannot be loaded. Adapters not in a slot wait in a CPU cache of `max_cpu_loras`
(least recently used out first) so switching back costs a copy, not a disk read.
Next: vllm_mini/lora/request.py.
"""

from __future__ import annotations

from dataclasses import dataclass

# The ranks vLLM accepts for --max-lora-rank (its slots are allocated for one of these).
SUPPORTED_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


@dataclass
class LoRAConfig:
    max_loras: int = 1
    max_lora_rank: int = 16
    max_cpu_loras: int | None = None  # None: max_loras

    def __post_init__(self) -> None:
        if not isinstance(self.max_loras, int) or self.max_loras < 1:
            raise ValueError(f"max_loras must be an int >= 1, got {self.max_loras!r}")
        if self.max_lora_rank not in SUPPORTED_RANKS:
            raise ValueError(
                f"max_lora_rank must be one of {list(SUPPORTED_RANKS)}, got {self.max_lora_rank!r}"
            )
        if self.max_cpu_loras is None:
            self.max_cpu_loras = self.max_loras
        if self.max_cpu_loras < self.max_loras:
            raise ValueError(
                f"max_cpu_loras ({self.max_cpu_loras}) must be >= max_loras ({self.max_loras})"
            )
