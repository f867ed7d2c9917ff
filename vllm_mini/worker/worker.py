"""Worker: owns one device, its model runner and its share of the KV cache.

Stage 5. Mirrors vllm/v1/worker/gpu_worker.py (and cpu_worker.py). Its job at start-up is to say
how many KV blocks fit: a fixed byte budget on CPU, free memory after a profiling forward pass on
GPU. With tensor parallelism there is one worker per rank; today there is one.
"""

from __future__ import annotations

import torch

from vllm_mini.config import VllmConfig
from vllm_mini.core.kv_cache_utils import get_num_blocks
from vllm_mini.core.sched.output import ModelRunnerOutput, SchedulerOutput
from vllm_mini.logger import init_logger
from vllm_mini.platforms import current_platform
from vllm_mini.worker.model_runner import ModelRunner

logger = init_logger(__name__)


class Worker:
    def __init__(self, vllm_config: VllmConfig) -> None:
        self.vllm_config = vllm_config
        self.model_runner = ModelRunner(vllm_config)

    def load_model(self) -> None:
        torch.manual_seed(self.vllm_config.model_config.seed)
        self.model_runner.load_model()

    def determine_num_blocks(self) -> int:
        cache = self.vllm_config.cache_config
        model = self.vllm_config.model_config
        if cache.num_gpu_blocks_override is not None:
            return cache.num_gpu_blocks_override
        budget = cache.kv_cache_memory_bytes or current_platform.default_kv_cache_bytes(
            self.vllm_config.device_config.torch_device
        )
        num_blocks = get_num_blocks(
            budget,
            model.num_layers,
            cache.block_size,
            model.num_kv_heads,
            model.head_size,
            model.dtype,
        )
        # No request can ever need more than max_num_seqs full-length sequences' worth of blocks.
        blocks_per_seq = -(-model.max_model_len // cache.block_size)
        cap = blocks_per_seq * self.vllm_config.scheduler_config.max_num_seqs
        return min(num_blocks, cap)

    def initialize_cache(self, num_blocks: int) -> None:
        self.model_runner.initialize_kv_cache(num_blocks)
        logger.info(
            "KV cache: %d blocks of %d tokens (%d tokens)",
            num_blocks,
            self.vllm_config.cache_config.block_size,
            num_blocks * self.vllm_config.cache_config.block_size,
        )

    def execute_model(self, scheduler_output: SchedulerOutput) -> ModelRunnerOutput:
        return self.model_runner.execute_model(scheduler_output)
