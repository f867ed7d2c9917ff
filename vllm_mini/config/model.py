"""ModelConfig: which model, which dtype, how long a sequence may get.

Stage 1. Mirrors vllm/config/model.py. It resolves the model source (the default SmolLM2 GGUF, a
.gguf file or an HF checkpoint directory), reads the HF config once, and checks every field against
what the model allows. Next: cache.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import torch

from vllm_mini.transformers_utils.config import ModelSource, get_hf_config, resolve_model_source

# The names `--quantization` takes (stage 7). Each maps to its QuantizationConfig class in the
# registry of vllm_mini/model_executor/layers/quantization/__init__.py (vLLM keeps the list there;
# our config/ sits below model_executor/ in the import layers, so the names live here).
QUANTIZATION_METHODS = ("gguf", "fp8", "compressed-tensors", "gptq", "awq")

_STR_TO_DTYPE = {
    "float32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "half": torch.float16,
}


@dataclass
class ModelConfig:
    """The model to run and how: source, dtype, length limit, quantization method.

    GGUF models: with dtype="auto" (the default) a .gguf file runs the `gguf` quantization method,
    its weights kept as the file's quantized blocks and float32 activations. To run it the old
    way, dequantized to plain float weights, name a float dtype: dtype="float32" (or "bfloat16").
    """

    model: str | None = None
    dtype: str | torch.dtype = "auto"
    seed: int = 0
    max_model_len: int | None = None
    trust_remote_code: bool = False
    max_logprobs: int = 20
    served_model_name: str | None = None
    # Always run the plain PyTorch modules: no torch.compile, no CUDA graphs (vLLM keeps this knob
    # here too; CompilationConfig.resolve reads it). Stage 6.
    enforce_eager: bool = False
    # The quantization method (stage 7): a name from vllm_mini.model_executor.layers.quantization,
    # or None to take the checkpoint's own `quantization_config` (if it has one). A .gguf model
    # with dtype="auto" runs "gguf" (its blocks stay quantized, float32 activations); an explicit
    # float dtype (dtype="float32" or "bfloat16") with quantization=None loads it dequantized.
    quantization: str | None = None
    # Stage 10 (multimodal models): the most items of each modality one prompt may carry, e.g.
    # {"image": 2} (a JSON string on the CLI), and the directory file:// image URLs may read from.
    limit_mm_per_prompt: dict[str, int] | str | None = None
    allowed_local_media_path: str | None = None
    # Filled in __post_init__.
    source: ModelSource = field(init=False)
    hf_config: Any = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.source = resolve_model_source(self.model)
        self.model = self.source.model
        self.hf_config = get_hf_config(self.source)
        if not self.served_model_name:
            self.served_model_name = self.model
        dtype_is_auto = self.dtype == "auto"
        self.dtype = self._resolve_dtype(self.dtype)
        self.quantization = self._resolve_quantization(self.quantization)
        if self.quantization is None and dtype_is_auto and self.source.gguf_file is not None:
            # A GGUF file is already quantized: run its blocks (4-8x fewer bytes per token than
            # dequantized float32). Asking for a float dtype keeps the dequantized path.
            self.quantization = "gguf"
        self.max_model_len = self._resolve_max_model_len(self.max_model_len)
        if not isinstance(self.seed, int):
            raise ValueError(f"seed must be an int, got {self.seed!r}")
        self.limit_mm_per_prompt = _parse_mm_limits(self.limit_mm_per_prompt)
        if not 0 <= self.max_logprobs <= 20:
            raise ValueError(f"max_logprobs must be in [0, 20], got {self.max_logprobs}")

    def _resolve_dtype(self, dtype: str | torch.dtype) -> torch.dtype:
        if isinstance(dtype, torch.dtype):
            if dtype not in _STR_TO_DTYPE.values():
                raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype}")
            return dtype
        if dtype == "auto":
            # vLLM follows the checkpoint's dtype. On CPU we default to float32: its matmuls are
            # the fastest there, and outputs match HF transformers' float32 exactly.
            return torch.float32
        if dtype not in _STR_TO_DTYPE:
            allowed = ", ".join(["auto", *_STR_TO_DTYPE])
            raise ValueError(f"dtype must be one of {allowed}; got {dtype!r}")
        return _STR_TO_DTYPE[dtype]

    def _resolve_quantization(self, quantization: str | None) -> str | None:
        """The user's method, checked against the checkpoint's (vLLM: _verify_quantization)."""
        if quantization is not None and quantization not in QUANTIZATION_METHODS:
            raise ValueError(
                f"quantization must be one of {list(QUANTIZATION_METHODS)} or None; "
                f"got {quantization!r}"
            )
        ckpt_cfg = getattr(self.hf_config, "quantization_config", None)
        if isinstance(ckpt_cfg, dict):
            ckpt_method = str(ckpt_cfg.get("quant_method", "")).lower() or None
            if quantization is None:
                return ckpt_method
            if quantization != ckpt_method:
                raise ValueError(
                    f"quantization={quantization!r} does not match the checkpoint, which is "
                    f"quantized with {ckpt_method!r} (its config.json quantization_config)"
                )
        if quantization == "gguf" and self.source.gguf_file is None:
            raise ValueError("quantization='gguf' needs a .gguf model file")
        return quantization

    def _resolve_max_model_len(self, max_model_len: int | None) -> int:
        limit = getattr(self.hf_text_config, "max_position_embeddings", None) or 2048
        if max_model_len is None:
            return int(limit)
        if not isinstance(max_model_len, int) or not 1 <= max_model_len <= limit:
            raise ValueError(
                f"max_model_len must be in [1, {limit}] (the model's max_position_embeddings), "
                f"got {max_model_len}"
            )
        return max_model_len

    # Shapes the rest of the engine needs, read once from the HF config.
    @property
    def architecture(self) -> str:
        return (getattr(self.hf_config, "architectures", None) or ["LlamaForCausalLM"])[0]

    @property
    def hf_text_config(self) -> Any:
        """The language model's config: a vision-language config nests it (vLLM's same name)."""
        return getattr(self.hf_config, "text_config", None) or self.hf_config

    @property
    def vocab_size(self) -> int:
        return self.hf_text_config.vocab_size

    @property
    def num_layers(self) -> int:
        return self.hf_text_config.num_hidden_layers

    @property
    def num_heads(self) -> int:
        return self.hf_text_config.num_attention_heads

    @property
    def num_kv_heads(self) -> int:
        return getattr(self.hf_text_config, "num_key_value_heads", None) or self.num_heads

    @property
    def head_size(self) -> int:
        head_dim = getattr(self.hf_text_config, "head_dim", None)
        return head_dim or self.hf_text_config.hidden_size // self.num_heads


def _parse_mm_limits(limits: dict[str, int] | str | None) -> dict[str, int] | None:
    if isinstance(limits, str):
        try:
            limits = json.loads(limits)
        except json.JSONDecodeError as e:
            raise ValueError(f'limit_mm_per_prompt must be JSON like {{"image": 2}}: {e}') from e
    if limits is None:
        return None
    if not isinstance(limits, dict) or any(
        k != "image" or not isinstance(v, int) or isinstance(v, bool) or v < 0
        for k, v in limits.items()
    ):
        raise ValueError(
            f'limit_mm_per_prompt must map "image" to an int >= 0, e.g. {{"image": 2}}; got '
            f"{limits!r}"
        )
    return limits
