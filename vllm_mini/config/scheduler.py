"""SchedulerConfig: the per-step token budget and sequence cap of continuous batching.

Stage 1 (used from stage 5). Mirrors vllm/config/scheduler.py. Next: parallel.py.
"""

from __future__ import annotations

from dataclasses import dataclass

_POLICIES = ("fcfs", "priority")


@dataclass
class SchedulerConfig:
    # Tokens one step may process, summed over all requests (vLLM V1's unified token budget).
    max_num_batched_tokens: int = 2048
    max_num_seqs: int = 128
    # Copied from ModelConfig by VllmConfig.
    max_model_len: int = 2048
    # Split long prompts across steps so decodes keep flowing (vLLM V1 always allows this).
    enable_chunked_prefill: bool = True
    policy: str = "fcfs"

    def __post_init__(self) -> None:
        if self.max_num_batched_tokens < 1:
            raise ValueError(
                f"max_num_batched_tokens must be >= 1, got {self.max_num_batched_tokens}"
            )
        if self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be >= 1, got {self.max_num_seqs}")
        if self.policy not in _POLICIES:
            raise ValueError(
                f"scheduling_policy must be one of {list(_POLICIES)}, got {self.policy!r}"
            )

    def verify_with_model_len(self) -> None:
        if not self.enable_chunked_prefill and self.max_num_batched_tokens < self.max_model_len:
            raise ValueError(
                f"max_num_batched_tokens ({self.max_num_batched_tokens}) must be >= max_model_len "
                f"({self.max_model_len}) when chunked prefill is off, or long prompts never fit"
            )
