"""Platforms: what the hardware we run on can do.

Mirrors vllm/platforms/ (cuda.py, cpu.py, ...). `current_platform` is chosen once at import.
"""

from __future__ import annotations

import torch

from vllm_mini.platforms.interface import Platform


def _detect() -> Platform:
    if torch.cuda.is_available():
        from vllm_mini.platforms.cuda import CudaPlatform

        return CudaPlatform()
    from vllm_mini.platforms.cpu import CpuPlatform

    return CpuPlatform()


current_platform: Platform = _detect()

__all__ = ["Platform", "current_platform"]
