"""GGUF metadata -> an HF config: what a .gguf file says about the model's shape.

Stage 1-2. vLLM's GGUF config helpers moved out with its GGUF loader to the separate
vllm-gguf-plugin package. Reading the config is part of resolving
the model (stage 1, config/model.py), so it lives here beside the other HF glue and not in
model_executor/model_loader/gguf_loader.py, which reads the weights (stage 2) and imports this.
Next: default_model.py.
"""

from __future__ import annotations

from pathlib import Path

from transformers import AutoConfig, PretrainedConfig


def gguf_to_hf_config(gguf_path: str | Path) -> PretrainedConfig:
    """The HF config transformers derives from the GGUF metadata."""
    path = Path(gguf_path)
    config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    if not getattr(config, "architectures", None):
        # GGUF names the family ("llama"), not the HF class; every family we read is a causal LM.
        config.architectures = [f"{config.model_type.capitalize()}ForCausalLM"]
        if config.model_type == "qwen2":
            config.architectures = ["Qwen2ForCausalLM"]
    return config
