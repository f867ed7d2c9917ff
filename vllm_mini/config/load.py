"""LoadConfig: how weights are read.

Stage 1 (used in stage 2). Mirrors vllm/config/load.py. Next: device.py.
"""

from __future__ import annotations

from dataclasses import dataclass

_LOAD_FORMATS = ("auto", "safetensors", "gguf", "dummy")


@dataclass
class LoadConfig:
    # auto: gguf for .gguf files, safetensors for checkpoint directories.
    # dummy: random weights of the right shapes (benchmarks of the engine without a checkpoint).
    load_format: str = "auto"

    def __post_init__(self) -> None:
        if self.load_format not in _LOAD_FORMATS:
            raise ValueError(
                f"load_format must be one of {list(_LOAD_FORMATS)}, got {self.load_format!r}"
            )
