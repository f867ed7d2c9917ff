"""EngineArgs and the config dataclasses agree: same defaults, and each flat field lands in its config.

EngineArgs repeats every knob as a flat field (for the CLI and `LLM(**kwargs)`); the config
dataclasses own the knobs. A default written twice drifts, so EngineArgs reads its defaults from
the configs. These tests pin the mapping down from both ends.
"""

from __future__ import annotations

import dataclasses

import pytest

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
)
from vllm_mini.engine import arg_utils
from vllm_mini.engine.arg_utils import EngineArgs

CONFIG_CLASSES = (
    ModelConfig,
    CacheConfig,
    SchedulerConfig,
    ParallelConfig,
    LoadConfig,
    DeviceConfig,
    AttentionConfig,
    LoRAConfig,
)
# Fields the name alone does not place: renamed ones (vLLM spells them the same way), and
# max_model_len, which SchedulerConfig also holds but VllmConfig copies there from ModelConfig.
EXPLICIT = {
    "scheduling_policy": (SchedulerConfig, "policy"),
    "attention_backend": (AttentionConfig, "backend"),
    "max_model_len": (ModelConfig, "max_model_len"),
}
# Knobs of the engine itself, with no config field behind them.
ENGINE_ONLY = {"disable_log_stats", "enable_lora"}
# Whole nested configs passed as one value (an int mode or a dict), as vLLM's --compilation-config:
# None means the config's own defaults.
NESTED = {
    "compilation_config": CompilationConfig,
    "structured_outputs_config": StructuredOutputsConfig,
}
# Nested configs whose absence means the feature is off: None stays None.
OPTIONAL_NESTED = {"speculative_config": SpeculativeConfig}


def config_field_of(name: str) -> tuple[type, str] | None:
    """The (config class, field name) an EngineArgs field sets, or None for engine-only ones."""
    if name in EXPLICIT:
        return EXPLICIT[name]
    owners = [
        cls for cls in CONFIG_CLASSES if name in {f.name for f in dataclasses.fields(cls) if f.init}
    ]
    assert len(owners) <= 1, f"{name} is a field of several configs: {owners}"
    return (owners[0], name) if owners else None


ENGINE_FIELDS = [f.name for f in dataclasses.fields(EngineArgs)]


@pytest.mark.parametrize("name", ENGINE_FIELDS)
def test_engine_args_default_equals_the_config_default(name):
    if name in NESTED:
        assert getattr(EngineArgs(), name) is None
        assert NESTED[name].from_cli(None) == NESTED[name]()
        return
    if name in OPTIONAL_NESTED:
        assert getattr(EngineArgs(), name) is None
        assert OPTIONAL_NESTED[name].from_cli(None) is None
        return
    mapped = config_field_of(name)
    if mapped is None:
        assert name in ENGINE_ONLY, (
            f"EngineArgs.{name} matches no config field: add it to a config in vllm_mini/config/ "
            "(and take its default from there), or list it in ENGINE_ONLY"
        )
        return
    cls, config_name = mapped
    config_field = next(f for f in dataclasses.fields(cls) if f.name == config_name)
    engine_field = next(f for f in dataclasses.fields(EngineArgs) if f.name == name)
    assert engine_field.default == config_field.default, (
        f"EngineArgs.{name} defaults to {engine_field.default!r} but {cls.__name__}.{config_name} "
        f"to {config_field.default!r}"
    )


def test_create_engine_config_passes_every_field_to_its_config(monkeypatch):
    # Replace each config class with a recorder, then give every field a unique value: a field
    # that lands in the wrong config (or nowhere) shows up as a missing or swapped value.
    def recorder(cls):
        return lambda **kwargs: (cls, kwargs)

    for cls in CONFIG_CLASSES:
        monkeypatch.setattr(arg_utils, cls.__name__, recorder(cls))

    def nested_recorder(cls, name):
        class NestedRecorder:
            @staticmethod
            def from_cli(value):
                return (cls, {name: value})

        return NestedRecorder

    for name, cls in {**NESTED, **OPTIONAL_NESTED}.items():
        monkeypatch.setattr(arg_utils, cls.__name__, nested_recorder(cls, name))
    monkeypatch.setattr(arg_utils, "VllmConfig", lambda **configs: dict(configs.values()))
    # The backend's constraints act on a real VllmConfig; this test only follows the fields.
    monkeypatch.setattr(arg_utils, "apply_backend_constraints", lambda config: config)
    values = {name: f"value-of-{name}" for name in ENGINE_FIELDS}
    received = EngineArgs(**values).create_engine_config()
    nested = {**NESTED, **OPTIONAL_NESTED}
    for name, cls in nested.items():
        assert received[cls][name] == values[name]
    for name in ENGINE_FIELDS:
        if name in nested:
            continue
        mapped = config_field_of(name)
        if mapped is not None:
            cls, config_name = mapped
            assert received[cls].get(config_name) == values[name], f"{name} -> {cls.__name__}"
