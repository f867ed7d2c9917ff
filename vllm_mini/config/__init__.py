"""Configuration: one dataclass per concern, composed into VllmConfig.

Stage 1. Mirrors vllm/config/. Read vllm.py first, then each piece it holds.
"""

from vllm_mini.config.attention import AttentionConfig
from vllm_mini.config.cache import CacheConfig
from vllm_mini.config.compilation import CompilationConfig, CompilationMode, CUDAGraphMode
from vllm_mini.config.device import DeviceConfig
from vllm_mini.config.load import LoadConfig
from vllm_mini.config.lora import LoRAConfig
from vllm_mini.config.model import ModelConfig
from vllm_mini.config.parallel import ParallelConfig
from vllm_mini.config.scheduler import SchedulerConfig
from vllm_mini.config.speculative import SpeculativeConfig
from vllm_mini.config.structured_outputs import StructuredOutputsConfig
from vllm_mini.config.vllm import VllmConfig, get_current_vllm_config, set_current_vllm_config

__all__ = [
    "AttentionConfig",
    "CacheConfig",
    "CompilationConfig",
    "CompilationMode",
    "CUDAGraphMode",
    "DeviceConfig",
    "LoadConfig",
    "LoRAConfig",
    "ModelConfig",
    "ParallelConfig",
    "SchedulerConfig",
    "SpeculativeConfig",
    "StructuredOutputsConfig",
    "VllmConfig",
    "get_current_vllm_config",
    "set_current_vllm_config",
]
