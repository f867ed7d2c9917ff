"""VllmConfig: the one object that carries every config top-down.

Stage 1. Mirrors vllm/config/vllm.py. The engine, the worker and every model layer receive this
one object (models are built as `Model(vllm_config=..., prefix=...)`), so adding a knob never
changes a constructor signature. Cross-config checks live in `__post_init__`. Next:
engine/arg_utils.py, which builds it from command-line style arguments.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vllm_mini.config.attention import AttentionConfig
from vllm_mini.config.cache import CacheConfig
from vllm_mini.config.compilation import CompilationConfig
from vllm_mini.config.device import DeviceConfig
from vllm_mini.config.load import LoadConfig
from vllm_mini.config.lora import LoRAConfig
from vllm_mini.config.model import ModelConfig
from vllm_mini.config.parallel import ParallelConfig
from vllm_mini.config.scheduler import SchedulerConfig
from vllm_mini.config.speculative import SpeculativeConfig
from vllm_mini.config.structured_outputs import StructuredOutputsConfig
from vllm_mini.logger import init_logger

if TYPE_CHECKING:
    from vllm_mini.model_executor.layers.quantization import QuantizationConfig

logger = init_logger(__name__)


@dataclass
class VllmConfig:
    model_config: ModelConfig
    cache_config: CacheConfig = field(default_factory=CacheConfig)
    scheduler_config: SchedulerConfig = field(default_factory=SchedulerConfig)
    parallel_config: ParallelConfig = field(default_factory=ParallelConfig)
    load_config: LoadConfig = field(default_factory=LoadConfig)
    device_config: DeviceConfig = field(default_factory=DeviceConfig)
    attention_config: AttentionConfig = field(default_factory=AttentionConfig)
    compilation_config: CompilationConfig = field(default_factory=CompilationConfig)
    # None: no speculative decoding (stage 11).
    speculative_config: SpeculativeConfig | None = None
    # None: LoRA off (stage 9).
    lora_config: LoRAConfig | None = None
    # Which grammar library serves constrained requests (stage 13).
    structured_outputs_config: StructuredOutputsConfig = field(
        default_factory=StructuredOutputsConfig
    )
    # Built from model_config.quantization by the model loader (stage 7), which needs the method
    # classes of model_executor/; every layer reads it at construction.
    quant_config: QuantizationConfig | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.scheduler_config.max_model_len = self.model_config.max_model_len
        self.scheduler_config.verify_with_model_len()
        self._verify_parallel()
        if self.attention_config.backend is None:
            from vllm_mini.platforms import current_platform

            self.attention_config.backend = current_platform.default_attention_backend(
                self.device_config.device_type
            )
        # LoRA layers branch in Python on each step's adapter mapping: they run eagerly, with
        # no compiled graph and no CUDA graph (vLLM captures them; not implemented here).
        self.compilation_config.resolve(
            self.device_config.device_type,
            self.scheduler_config.max_num_seqs,
            self.model_config.enforce_eager or self.lora_config is not None,
        )

    def _verify_parallel(self) -> None:
        """Stage 8: sizes against the model, and the features one process only supports."""
        parallel = self.parallel_config
        parallel.verify_with_model_config(self.model_config.hf_text_config)
        if parallel.world_size == 1:
            return
        unsupported = {
            "enable_lora": self.lora_config is not None,
            "speculative_config": self.speculative_config is not None,
            "quantization='gguf' (pass dtype='float32' to load it dequantized)": (
                self.model_config.quantization == "gguf" and parallel.tensor_parallel_size > 1
            ),
        }
        for name, used in unsupported.items():
            if used:
                raise ValueError(
                    f"{name} is not supported with tensor_parallel_size x "
                    f"pipeline_parallel_size = {parallel.world_size} in vllm_mini"
                )


_current_vllm_config: VllmConfig | None = None


@contextlib.contextmanager
def set_current_vllm_config(vllm_config: VllmConfig) -> Iterator[None]:
    """Make the config visible to layers built inside (vLLM does the same during model init)."""
    global _current_vllm_config
    old = _current_vllm_config
    _current_vllm_config = vllm_config
    try:
        yield
    finally:
        _current_vllm_config = old


def get_current_vllm_config() -> VllmConfig:
    if _current_vllm_config is None:
        raise RuntimeError("no VllmConfig is set; build models inside set_current_vllm_config()")
    return _current_vllm_config
