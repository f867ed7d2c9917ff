"""Worker: owns one device, its model runner and its share of the KV cache.

Stage 5. Mirrors vllm/v1/worker/gpu_worker.py (and cpu_worker.py). Its job at start-up is to say
how many KV blocks fit. On CPU the byte budget is explicit (`kv_cache_memory_bytes`, or the
VLLM_MINI_CPU_KVCACHE_SPACE variable, default 1 GiB). On GPU it is measured, as vLLM's
`determine_available_memory` does: a profiling forward pass at the largest step the scheduler may
send shows the peak activation memory, and the KV cache gets
`gpu_memory_utilization * total - weights - peak activations - non-torch memory`.
With tensor or pipeline parallelism there is one worker per rank (stage 8, executor/), each
sizing the KV cache for its own heads and layers; the executor keeps the smallest answer.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass

import torch

from vllm_mini.config import VllmConfig
from vllm_mini.core.kv_cache_utils import get_num_blocks
from vllm_mini.core.sched.output import GrammarOutput, ModelRunnerOutput, SchedulerOutput
from vllm_mini.distributed import get_pp_group, get_tp_group
from vllm_mini.distributed.parallel_state import CommStats
from vllm_mini.logger import init_logger
from vllm_mini.platforms.cpu import cpu_kv_cache_space_bytes, tune_malloc
from vllm_mini.worker.model_runner import ModelRunner

logger = init_logger(__name__)


@dataclass
class RankInfo:
    num_heads: int  # query heads of this rank's attention layers
    num_kv_heads: int  # KV heads it holds (and caches)
    num_layers: int  # decoder layers on its pipeline stage
    tp: CommStats  # all-reduces within its tensor-parallel group
    pp: CommStats  # sends and receives to its neighbouring stages


GiB = 1 << 30


def kv_cache_budget(
    total: int,
    free_at_start: int,
    gpu_memory_utilization: float,
    weights: int,
    peak_activations: int,
    non_torch: int,
) -> int:
    """Bytes the KV cache may take on a GPU (vllm/v1/worker/gpu_worker.py's arithmetic).

    `gpu_memory_utilization` is the share of the WHOLE device this engine may use, not of what is
    free: weights, the activation peak of the largest step and non-torch memory (CUDA context
    growth, cuBLAS workspaces) come out of it first, the KV cache gets the rest.
    """
    requested = int(total * gpu_memory_utilization)
    if free_at_start < requested:
        raise ValueError(
            f"gpu_memory_utilization={gpu_memory_utilization} asks for {requested / GiB:.2f} GiB "
            f"but only {free_at_start / GiB:.2f} GiB of {total / GiB:.2f} GiB were free at "
            "start-up (another process holds the rest); lower gpu_memory_utilization"
        )
    budget = requested - weights - peak_activations - non_torch
    if budget <= 0:
        raise ValueError(
            f"no memory left for the KV cache: gpu_memory_utilization={gpu_memory_utilization} of "
            f"{total / GiB:.2f} GiB is {requested / GiB:.2f} GiB, but weights take "
            f"{weights / GiB:.2f} GiB, peak activations {peak_activations / GiB:.2f} GiB and "
            f"non-torch memory {non_torch / GiB:.2f} GiB; raise gpu_memory_utilization or lower "
            "max_num_batched_tokens / max_num_seqs"
        )
    return budget


class Worker:
    def __init__(self, vllm_config: VllmConfig) -> None:
        self.vllm_config = vllm_config
        self.device = vllm_config.device_config.torch_device
        self.model_runner = ModelRunner(vllm_config)
        self._before_load = self._after_load = None  # CUDA memory snapshots
        if self.device.type == "cpu":
            tune_malloc()  # activations reuse freed heap instead of fresh mmap pages

    def load_model(self) -> None:
        torch.manual_seed(self.vllm_config.model_config.seed)
        if self.device.type == "cuda":
            from vllm_mini.platforms.cuda import memory_snapshot

            torch.cuda.empty_cache()
            self._before_load = memory_snapshot(self.device)
            self.model_runner.load_model()
            self._after_load = memory_snapshot(self.device)
        else:
            self.model_runner.load_model()

    def determine_available_memory(self) -> int:
        """The KV cache's byte budget: what the user set, or the platform's answer."""
        cache = self.vllm_config.cache_config
        if cache.kv_cache_memory_bytes is not None:
            return cache.kv_cache_memory_bytes
        if self.device.type == "cuda":
            return self._profile_gpu_memory()
        return cpu_kv_cache_space_bytes()

    def _profile_gpu_memory(self) -> int:
        from vllm_mini.platforms.cuda import memory_snapshot

        torch.cuda.reset_peak_memory_stats(self.device)
        dummy_kv_bytes = self.model_runner.profile_run()
        after = memory_snapshot(self.device)
        before, loaded = self._before_load, self._after_load
        weights = loaded.torch_allocated - before.torch_allocated
        # The profile's small dummy KV cache is live during the peak but is not an activation.
        peak_activations = max(0, after.torch_peak - loaded.torch_allocated - dummy_kv_bytes)
        non_torch = max(0, after.non_torch - before.non_torch)
        util = self.vllm_config.cache_config.gpu_memory_utilization
        budget = kv_cache_budget(
            after.total, before.free, util, weights, peak_activations, non_torch
        )
        torch.cuda.empty_cache()  # hand the profile's cached blocks back for the KV cache
        logger.info(
            "memory profile: %.2f GiB total x gpu_memory_utilization %.2f = %.2f GiB; weights "
            "%.2f GiB, peak activations %.2f GiB, non-torch %.2f GiB -> KV cache %.2f GiB",
            after.total / GiB,
            util,
            after.total * util / GiB,
            weights / GiB,
            peak_activations / GiB,
            non_torch / GiB,
            budget / GiB,
        )
        return budget

    def determine_num_blocks(self) -> int:
        cache = self.vllm_config.cache_config
        model = self.vllm_config.model_config
        if cache.num_gpu_blocks_override is not None:
            return cache.num_gpu_blocks_override
        # A draft model (stage 11) keeps its own K/V in the same blocks: a block costs both.
        drafter = self.model_runner.drafter
        # Stage 8: this rank's share only — its pipeline stage's layers, its TP rank's KV heads.
        layers = self.model_runner.attn_layers
        num_blocks = get_num_blocks(
            self.determine_available_memory(),
            len(layers) or model.num_layers,
            cache.block_size,
            layers[0].num_kv_heads if layers else model.num_kv_heads,
            model.head_size,
            model.dtype,
            extra_bytes_per_block=drafter.kv_bytes_per_block() if drafter is not None else 0,
        )
        # No request can ever need more than max_num_seqs full-length sequences' worth of blocks.
        blocks_per_seq = -(-model.max_model_len // cache.block_size)
        cap = blocks_per_seq * self.vllm_config.scheduler_config.max_num_seqs
        return min(num_blocks, cap)

    def initialize_cache(self, num_blocks: int) -> None:
        self.model_runner.initialize_kv_cache(num_blocks)
        # CUDA graphs point at the KV cache, so they are captured only now (vLLM: capture_model).
        self.model_runner.capture_model()
        logger.info(
            "KV cache: %d blocks of %d tokens (%d tokens)",
            num_blocks,
            self.vllm_config.cache_config.block_size,
            num_blocks * self.vllm_config.cache_config.block_size,
        )

    def execute_model(
        self,
        scheduler_output: SchedulerOutput,
        grammar_output: Future | GrammarOutput | None = None,
    ) -> ModelRunnerOutput:
        return self.model_runner.execute_model(scheduler_output, grammar_output)

    def rank_info(self) -> RankInfo:
        """Stage 8: what this rank holds and the collectives it ran so far (demos, benchmarks)."""
        layers = self.model_runner.attn_layers
        return RankInfo(
            num_heads=layers[0].num_heads if layers else 0,
            num_kv_heads=layers[0].num_kv_heads if layers else 0,
            num_layers=len(layers),
            tp=get_tp_group().stats,
            pp=get_pp_group().stats,
        )
