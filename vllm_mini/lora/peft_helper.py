"""PEFTHelper: read and check a PEFT adapter's adapter_config.json. Stage 9.

Mirrors vllm/lora/peft_helper.py. PEFT (HF's parameter-efficient fine-tuning library) saves a
LoRA adapter as two files: adapter_config.json (rank r, lora_alpha, target_modules, use_rslora,
...) and adapter_model.safetensors (an A and a B matrix per target module). The update a LoRA
layer adds is scaling * B @ A @ x with scaling = lora_alpha / r, or lora_alpha / sqrt(r) with
rank-stabilized LoRA (Kalajdzievski 2023). Everything an engine cannot serve is refused here,
before any weight is read, with the field and the allowed values in the message.
Next: lora_model.py.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

# The linear layers of a Llama-style block that an adapter may target (HF names), and the fused
# layer (and slice) that holds each of them in vllm_mini's models.
TARGET_MODULES = {
    "q_proj": ("qkv_proj", 0),
    "k_proj": ("qkv_proj", 1),
    "v_proj": ("qkv_proj", 2),
    "o_proj": ("o_proj", 0),
    "gate_proj": ("gate_up_proj", 0),
    "up_proj": ("gate_up_proj", 1),
    "down_proj": ("down_proj", 0),
}


@dataclass
class PEFTHelper:
    r: int
    lora_alpha: float
    target_modules: list[str]
    use_rslora: bool = False

    @property
    def scaling(self) -> float:
        return self.lora_alpha / (math.sqrt(self.r) if self.use_rslora else self.r)

    @classmethod
    def from_local_dir(cls, path: str | Path, max_lora_rank: int) -> PEFTHelper:
        path = Path(path)
        config_file = path / "adapter_config.json"
        if not config_file.is_file():
            raise ValueError(f"LoRA adapter {str(path)!r} has no adapter_config.json")
        config = json.loads(config_file.read_text())
        if config.get("peft_type", "LORA") != "LORA":
            raise ValueError(f"adapter {str(path)!r} is {config['peft_type']}, not a LoRA adapter")
        r = config.get("r")
        if not isinstance(r, int) or r < 1:
            raise ValueError(f"adapter {str(path)!r}: r must be an int >= 1, got {r!r}")
        if r > max_lora_rank:
            raise ValueError(
                f"adapter {str(path)!r} has rank {r}, above max_lora_rank={max_lora_rank}; "
                "start the engine with a larger --max-lora-rank"
            )
        targets = config.get("target_modules") or []
        if isinstance(targets, str):  # PEFT allows a regex; we need the explicit module names
            raise ValueError(
                f"adapter {str(path)!r}: target_modules must be a list of module names, got the "
                f"pattern {targets!r}"
            )
        unknown = sorted(set(targets) - set(TARGET_MODULES))
        if unknown or not targets:
            raise ValueError(
                f"adapter {str(path)!r} targets modules {unknown or targets}; supported: "
                f"{sorted(TARGET_MODULES)}"
            )
        if config.get("bias", "none") != "none":
            raise ValueError(f"adapter {str(path)!r}: bias={config['bias']!r} is not supported")
        if config.get("modules_to_save"):
            raise ValueError(
                f"adapter {str(path)!r} also saves full modules {config['modules_to_save']}; "
                "only LoRA matrices are supported"
            )
        return cls(
            r=r,
            lora_alpha=float(config.get("lora_alpha", r)),
            target_modules=list(targets),
            use_rslora=bool(config.get("use_rslora", False)),
        )
