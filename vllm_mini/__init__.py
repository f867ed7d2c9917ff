"""vllm_mini: an educational, layered re-implementation of the vLLM inference engine.

Mirrors vllm/__init__.py: the public API is `LLM` and `SamplingParams` for offline inference,
`LLMEngine` / `AsyncLLM` to drive the engine yourself, `EngineArgs` for every knob.
"""

from vllm_mini.engine.arg_utils import EngineArgs
from vllm_mini.entrypoints.llm import LLM
from vllm_mini.outputs import CompletionOutput, RequestOutput
from vllm_mini.sampling_params import SamplingParams

__all__ = ["LLM", "CompletionOutput", "EngineArgs", "RequestOutput", "SamplingParams"]
__version__ = "0.1.0"
