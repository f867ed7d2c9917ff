"""Reading a nested config from the command line or from `LLM(...)` keyword arguments.

Stage 1. Mirrors vllm/config/utils.py. vLLM takes a whole sub-config as one value
(`--speculative-config '{"method": "ngram", ...}'`, `LLM(speculative_config={...})`): a dict, or
its JSON text on the command line. Every such config reads it the same way, so a typo in a key
is an error naming the config and the keys it knows. Next: vllm.py.
"""

from __future__ import annotations

import json
from dataclasses import fields
from typing import Any, TypeVar

T = TypeVar("T")


def config_from_cli(cls: type[T], value: dict[str, Any] | str, name: str) -> T:
    """cls(**value) for a dict or its JSON text; unknown keys and bad JSON name `name`."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise ValueError(f"{name} is not valid JSON: {e}") from e
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a dict, got {value!r}")
    known = {f.name for f in fields(cls) if f.init}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ValueError(f"unknown {name} keys {unknown}; known: {sorted(known)}")
    return cls(**value)
