"""DeviceConfig: which device runs the model.

Stage 1. Mirrors vllm/config/device.py; the platform (platforms/) decides what "auto" means.
Next: attention.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

_DEVICES = ("auto", "cpu", "cuda")


@dataclass
class DeviceConfig:
    device: str = "auto"
    device_type: str = field(init=False)

    def __post_init__(self) -> None:
        if self.device not in _DEVICES:
            raise ValueError(f"device must be one of {list(_DEVICES)}, got {self.device!r}")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("device='cuda' was asked for, but no CUDA device is available")
        if self.device == "auto":
            self.device_type = "cuda" if torch.cuda.is_available() else "cpu"
        else:
            self.device_type = self.device

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device_type)
