"""Reading a compressed-tensors config: quantization args, and which layers a group targets.

Stage 7. Mirrors vllm/model_executor/layers/quantization/compressed_tensors/utils.py. vLLM
validates each `weights` / `input_activations` dict with the compressed-tensors package's
pydantic `QuantizationArgs`; we parse the fields the engine uses into a small dataclass, and
say which field is wrong when one is.

Matching: a config group's `targets` (and the top-level `ignore` list) hold layer names, `re:`
regexes over layer names, or module class names ("Linear"). Names are the checkpoint's
(`model.layers.0.self_attn.q_proj`), but our fused layers are `qkv_proj` and `gate_up_proj`:
a fused layer matches when ALL its parts match the same way, and a config that quantizes q_proj
but not k_proj cannot run as one matmul, so it is an error. Next: compressed_tensors.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# Our fused layers and the checkpoint's layers they were made of (vLLM: packed_modules_mapping).
PACKED_MODULES_MAPPING: dict[str, list[str]] = {
    "qkv_proj": ["q_proj", "k_proj", "v_proj"],
    "gate_up_proj": ["gate_proj", "up_proj"],
}

TYPES = ("int", "float")
STRATEGIES = ("tensor", "channel", "group", "token")
ACTORDERS = (None, "static", "weight")  # "group"/"dynamic" reorder columns: vLLM dropped them


def config_error(reason: str) -> ValueError:
    return ValueError(f"compressed-tensors: {reason}")


@dataclass(frozen=True)
class QuantArgs:
    """How one tensor kind (weights or input activations) is quantized."""

    num_bits: int
    type: str  # "int" | "float"
    strategy: str  # "tensor" | "channel" | "group" | "token"
    symmetric: bool
    dynamic: bool  # scales computed at run time (activations) instead of stored
    group_size: int | None
    actorder: str | None = None

    @classmethod
    def parse(cls, raw: Any, where: str) -> QuantArgs:
        """Validate one args dict; `where` names it in errors ("config_groups.group_0.weights")."""
        if not isinstance(raw, dict):
            raise config_error(f"{where} must be a dict of quantization args; got {raw!r}")
        num_bits = raw.get("num_bits", 8)
        if num_bits not in (4, 8):
            raise config_error(f"{where}.num_bits must be 4 or 8; got {num_bits!r}")
        qtype = raw.get("type", "int")
        if qtype not in TYPES:
            raise config_error(f"{where}.type must be one of {TYPES}; got {qtype!r}")
        strategy = raw.get("strategy", "tensor")
        if strategy not in STRATEGIES:
            raise config_error(f"{where}.strategy must be one of {STRATEGIES}; got {strategy!r}")
        group_size = raw.get("group_size")
        if strategy == "group":
            if not isinstance(group_size, int) or group_size <= 0:
                raise config_error(
                    f"{where}.group_size must be a positive int with strategy 'group'; "
                    f"got {group_size!r}"
                )
        elif group_size not in (None, -1):
            raise config_error(
                f"{where}.group_size is only meaningful with strategy 'group'; got "
                f"group_size={group_size!r} with strategy {strategy!r}"
            )
        actorder = raw.get("actorder")
        if actorder not in ACTORDERS:
            raise config_error(f"{where}.actorder must be one of {ACTORDERS}; got {actorder!r}")
        dynamic = raw.get("dynamic", False)
        if dynamic not in (True, False):  # "local" (per-group dynamic, NVFP4) is not supported
            raise config_error(f"{where}.dynamic must be true or false; got {dynamic!r}")
        symmetric = raw.get("symmetric", True)
        if symmetric not in (True, False):
            raise config_error(f"{where}.symmetric must be true or false; got {symmetric!r}")
        return cls(num_bits, qtype, strategy, symmetric, dynamic, group_size, actorder)


def is_match(name: str, target: str, check_contains: bool = False) -> bool:
    """`target` equals `name`, or is `re:<regex>` matching all of it, or (class names) is in it."""
    if target.startswith("re:"):
        return re.fullmatch(target[3:], name) is not None
    return name == target or (check_contains and target in name)


def unfused_names(layer_name: str, mapping: Mapping[str, list[str]]) -> list[str]:
    """`...self_attn.qkv_proj` -> the checkpoint's q/k/v names; other layers -> [layer_name]."""
    prefix, _, last = layer_name.rpartition(".")
    parts = mapping.get(last)
    if not parts:
        return [layer_name]
    return [f"{prefix}.{part}" if prefix else part for part in parts]


def should_ignore_layer(
    layer_name: str, ignore: Iterable[str], mapping: Mapping[str, list[str]]
) -> bool:
    """Whether the `ignore` list leaves this layer unquantized (all its parts, or none)."""
    ignore = list(ignore)
    ignored = [
        any(is_match(n, pattern) for pattern in ignore) for n in unfused_names(layer_name, mapping)
    ]
    if any(ignored) and not all(ignored):
        raise config_error(
            f"the parts of {layer_name} must all be ignored or all be quantized (it runs as one "
            f"matmul); 'ignore' covers only some of {unfused_names(layer_name, mapping)}"
        )
    return all(ignored)


def find_matched_target(
    layer_name: str, class_name: str, targets: Iterable[str], mapping: Mapping[str, list[str]]
) -> str | None:
    """The first target naming this layer (all its parts alike), else its class; else None."""
    targets = list(targets)
    per_part = []
    for name in unfused_names(layer_name, mapping):
        per_part.append(next((t for t in targets if is_match(name, t)), None))
    matched = [t for t in per_part if t is not None]
    if matched and len(matched) < len(per_part):
        raise config_error(
            f"only some parts of {layer_name} are targeted ({per_part}); a fused layer needs "
            "one scheme for all its parts"
        )
    if len(set(matched)) > 1:
        raise config_error(
            f"the parts of {layer_name} match different targets {per_part}; a fused layer "
            "needs one scheme"
        )
    if matched:
        return matched[0]
    # Class-name targets: "Linear" matches every *Linear layer (ColumnParallelLinear, ...).
    return next((t for t in targets if is_match(class_name, t, check_contains=True)), None)
