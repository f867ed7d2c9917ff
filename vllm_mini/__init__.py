"""vllm_mini: an educational, layered re-implementation of the vLLM inference engine.

Mirrors vllm/__init__.py: the public API is `LLM` and `SamplingParams` for offline inference,
`LLMEngine` / `AsyncLLM` to drive the engine yourself, `EngineArgs` for every knob. Names are
imported lazily (as vLLM does) so `import vllm_mini.core.block_pool` does not load the model stack.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "LLM": "vllm_mini.entrypoints.llm",
    "SamplingParams": "vllm_mini.sampling_params",
    "EngineArgs": "vllm_mini.engine.arg_utils",
    "LLMEngine": "vllm_mini.engine.llm_engine",
    "AsyncLLM": "vllm_mini.engine.async_llm",
    "RequestOutput": "vllm_mini.outputs",
    "CompletionOutput": "vllm_mini.outputs",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vllm_mini' has no attribute {name!r}")
