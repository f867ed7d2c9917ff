"""LoRARequest: which adapter a request runs with. Stage 9. Mirrors vllm/lora/request.py.

`lora_int_id` is the adapter's identity everywhere inside the engine (>= 1; 0 means the base
model): the scheduler counts distinct ids per step, the prefix cache keys blocks by it, the
model manager keeps one slot per id. `lora_name` is what users and the server call it.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class LoRARequest:
    lora_name: str
    lora_int_id: int
    lora_path: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.lora_int_id, int) or self.lora_int_id < 1:
            raise ValueError(f"lora_int_id must be an int >= 1, got {self.lora_int_id!r}")
        if not self.lora_name:
            raise ValueError("lora_name must be a non-empty string")
