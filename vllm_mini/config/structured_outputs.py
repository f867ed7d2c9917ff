"""StructuredOutputsConfig: which grammar library turns constraints into token masks.

Stage 13. Mirrors vllm/config/structured_outputs.py. A request asks for a constraint (a JSON
schema, a regex, a list of choices, a grammar) in its SamplingParams; the engine compiles it with
one backend for the whole engine: `xgrammar` (the default; vLLM's too) or `guidance`
(llguidance). `auto` picks xgrammar. Next: sampling_params.py (StructuredOutputsParams).
"""

from __future__ import annotations

from dataclasses import dataclass

from vllm_mini.config.utils import config_from_cli

BACKENDS = ("auto", "xgrammar", "guidance")


@dataclass
class StructuredOutputsConfig:
    backend: str = "auto"
    # JSON without free whitespace between tokens: shorter outputs, and a small model cannot
    # wander into endless newlines inside an object (vLLM's knob of the same name).
    disable_any_whitespace: bool = False
    # guidance only: treat schemas without `additionalProperties` as if it were false.
    disable_additional_properties: bool = False

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(
                f"structured_outputs_config.backend must be one of {list(BACKENDS)}, "
                f"got {self.backend!r}"
            )
        if self.disable_additional_properties and self.backend != "guidance":
            raise ValueError(
                "structured_outputs_config.disable_additional_properties needs "
                f"backend='guidance', got backend={self.backend!r}"
            )

    @property
    def resolved_backend(self) -> str:
        return "xgrammar" if self.backend == "auto" else self.backend

    @classmethod
    def from_cli(
        cls, value: StructuredOutputsConfig | dict | str | None
    ) -> StructuredOutputsConfig:
        """`LLM(structured_outputs_config={...})` or `--structured-outputs-config '{...}'`."""
        if value is None:
            return cls()
        if isinstance(value, StructuredOutputsConfig):
            return value
        return config_from_cli(cls, value, "structured_outputs_config")
