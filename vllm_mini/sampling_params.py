"""SamplingParams: how to pick each next token, and when to stop.

Mirrors vllm/sampling_params.py: same field names, defaults and validation, so vLLM code runs
unchanged. Every bad value raises a ValueError naming the field, the allowed range and the value.
StructuredOutputsParams (stage 13) says what the output must look like: JSON matching a schema,
a regex, one of a list of choices, or a grammar; structured_output/ turns it into token masks.
"""

from __future__ import annotations

import copy
import enum
import json
from dataclasses import dataclass, field
from typing import Any

_SAMPLING_EPS = 1e-5  # below this temperature we sample greedily (vLLM's constant)
MAX_LOGPROBS = 20
MAX_N = 128


class RequestOutputKind(enum.IntEnum):
    """What each RequestOutput of a request carries (vLLM's enum of the same name)."""

    CUMULATIVE = 0  # everything generated so far, every time
    DELTA = 1  # only what is new since the last output (streaming clients)
    FINAL_ONLY = 2  # one output, when the request finishes (offline LLM.generate)


class SamplingType(enum.IntEnum):
    GREEDY = 0
    RANDOM = 1
    RANDOM_SEED = 2


# The constraint kinds of StructuredOutputsParams; a request sets exactly one of them.
STRUCTURED_OUTPUT_KINDS = ("json", "regex", "choice", "grammar", "json_object", "structural_tag")


@dataclass
class StructuredOutputsParams:
    """What the output must look like (vLLM's class of the same name; stage 13).

    Exactly one of: `json` (a JSON schema, as a dict or its JSON text), `regex`, `choice` (the
    output is one of these strings), `grammar` (EBNF/GBNF for xgrammar, Lark for guidance),
    `json_object=True` (any JSON object), `structural_tag` (xgrammar's tagged regions, as JSON).
    """

    json: str | dict | None = None
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None
    disable_any_whitespace: bool = False
    disable_additional_properties: bool = False
    whitespace_pattern: str | None = None
    structural_tag: str | None = None

    def __post_init__(self) -> None:
        given = [k for k in STRUCTURED_OUTPUT_KINDS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "structured_outputs must set exactly one of "
                f"{', '.join(STRUCTURED_OUTPUT_KINDS)}; got {given or 'none'}"
            )
        if isinstance(self.json, str):
            try:
                parsed = json.loads(self.json)
            except json.JSONDecodeError as e:
                raise ValueError(f"structured_outputs.json is not valid JSON: {e}") from e
            if not isinstance(parsed, dict):
                raise ValueError(f"structured_outputs.json must be a JSON object, got {parsed!r}")
        elif self.json is not None and not isinstance(self.json, dict):
            raise ValueError(
                f"structured_outputs.json must be a dict or a JSON string, got {self.json!r}"
            )
        for name in ("regex", "grammar", "structural_tag"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ValueError(f"structured_outputs.{name} must be a non-empty string")
        if self.choice is not None:
            if not isinstance(self.choice, list) or not self.choice:
                raise ValueError(
                    f"structured_outputs.choice must be a non-empty list, got {self.choice!r}"
                )
            for c in self.choice:
                if not isinstance(c, str) or not c:
                    raise ValueError(
                        f"structured_outputs.choice must hold non-empty strings, got {c!r}"
                    )
        if self.json_object is not None and self.json_object is not True:
            raise ValueError(
                f"structured_outputs.json_object must be true, got {self.json_object!r}"
            )

    @property
    def kind(self) -> str:
        return next(k for k in STRUCTURED_OUTPUT_KINDS if getattr(self, k) is not None)

    @property
    def json_schema(self) -> dict[str, Any] | None:
        return json.loads(self.json) if isinstance(self.json, str) else self.json


def _check_number(name: str, value: object, kind: type = float) -> None:
    ok = isinstance(value, (int, float)) if kind is float else isinstance(value, int)
    if not ok or isinstance(value, bool):
        raise ValueError(f"{name} must be a{'n int' if kind is int else ' number'}, got {value!r}")


@dataclass
class SamplingParams:
    n: int = 1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    max_tokens: int | None = 16
    min_tokens: int = 0
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    detokenize: bool = True
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    # Logits controls (OpenAI's logit_bias; vLLM's allowed_token_ids and bad_words).
    output_kind: RequestOutputKind = RequestOutputKind.CUMULATIVE
    # Keep only the last k prompt tokens (-1: the last max_model_len), vLLM's field.
    truncate_prompt_tokens: int | None = None
    logit_bias: dict[int, float] | None = None
    allowed_token_ids: list[int] | None = None
    bad_words: list[str] | None = None
    # What the output must look like (stage 13); a dict is read as StructuredOutputsParams.
    structured_outputs: StructuredOutputsParams | None = None
    # bad_words as token sequences, filled by the front end (Processor) with the tokenizer.
    bad_words_token_ids: list[list[int]] = field(default_factory=list, repr=False)
    # Filled by the engine: stop_token_ids plus EOS unless ignore_eos.
    all_stop_token_ids: set[int] = field(default_factory=set, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop or [])
        self.stop_token_ids = list(self.stop_token_ids or [])
        self._verify()
        self.all_stop_token_ids = set(self.stop_token_ids)

    def _verify(self) -> None:
        for name in ("n", "top_k", "min_tokens"):
            _check_number(name, getattr(self, name), int)
        for name in (
            "presence_penalty",
            "frequency_penalty",
            "repetition_penalty",
            "temperature",
            "top_p",
            "min_p",
        ):
            _check_number(name, getattr(self, name))
        if not 1 <= self.n <= MAX_N:
            raise ValueError(f"n must be in [1, {MAX_N}], got {self.n}.")
        if not -2.0 <= self.presence_penalty <= 2.0:
            raise ValueError(f"presence_penalty must be in [-2, 2], got {self.presence_penalty}.")
        if not -2.0 <= self.frequency_penalty <= 2.0:
            raise ValueError(f"frequency_penalty must be in [-2, 2], got {self.frequency_penalty}.")
        if self.repetition_penalty <= 0.0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}.")
        if self.temperature < 0.0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}.")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}.")
        if self.top_k < -1:
            raise ValueError(f"top_k must be -1 or 0 (disabled) or >= 1, got {self.top_k}.")
        if not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}.")
        if self.seed is not None:
            _check_number("seed", self.seed, int)
        if self.max_tokens is not None:
            _check_number("max_tokens", self.max_tokens, int)
            if self.max_tokens < 1:
                raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}.")
        if self.min_tokens < 0:
            raise ValueError(f"min_tokens must be >= 0, got {self.min_tokens}.")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError(
                f"min_tokens must be <= max_tokens={self.max_tokens}, got {self.min_tokens}."
            )
        if self.logprobs is not None:
            _check_number("logprobs", self.logprobs, int)
            if not 0 <= self.logprobs <= MAX_LOGPROBS:
                raise ValueError(f"logprobs must be in [0, {MAX_LOGPROBS}], got {self.logprobs}.")
        if self.prompt_logprobs is not None:
            _check_number("prompt_logprobs", self.prompt_logprobs, int)
            if not 0 <= self.prompt_logprobs <= MAX_LOGPROBS:
                raise ValueError(
                    f"prompt_logprobs must be in [0, {MAX_LOGPROBS}], got {self.prompt_logprobs}."
                )
        for s in self.stop:
            if not isinstance(s, str) or not s:
                raise ValueError(f"stop must contain non-empty strings, got {s!r}.")
        if self.stop and not self.detokenize:
            # Stop strings are matched in the detokenized text; without text there is nothing to
            # match, and silently ignoring them would generate past the user's stop.
            raise ValueError(
                "stop strings need detokenize=True (they are matched in the output text); "
                f"got stop={self.stop} with detokenize=False."
            )
        for t in self.stop_token_ids:
            if not isinstance(t, int) or isinstance(t, bool) or t < 0:
                raise ValueError(f"stop_token_ids must be non-negative ints, got {t!r}.")
        if (
            isinstance(self.output_kind, str)
            and self.output_kind.upper() in RequestOutputKind.__members__
        ):
            self.output_kind = RequestOutputKind[self.output_kind.upper()]
        if self.output_kind not in list(RequestOutputKind):
            names = [k.name.lower() for k in RequestOutputKind]
            raise ValueError(f"output_kind must be one of {names}, got {self.output_kind!r}.")
        self.output_kind = RequestOutputKind(self.output_kind)
        if self.truncate_prompt_tokens is not None:
            _check_number("truncate_prompt_tokens", self.truncate_prompt_tokens, int)
            if self.truncate_prompt_tokens < 1 and self.truncate_prompt_tokens != -1:
                raise ValueError(
                    "truncate_prompt_tokens must be >= 1 or -1 (the model's context length), "
                    f"got {self.truncate_prompt_tokens}."
                )
        if self.logit_bias is not None:
            if not isinstance(self.logit_bias, dict):
                raise ValueError(
                    f"logit_bias must be a dict token id -> bias, got {self.logit_bias!r}."
                )
            bias = {}
            for token, value in self.logit_bias.items():
                # JSON object keys are strings: the server sends {"50256": -100}.
                if isinstance(token, str) and token.lstrip("-").isdigit():
                    token = int(token)
                if not isinstance(token, int) or isinstance(token, bool) or token < 0:
                    raise ValueError(f"logit_bias keys must be token ids >= 0, got {token!r}.")
                _check_number("logit_bias value", value)
                if not -100.0 <= value <= 100.0:
                    raise ValueError(f"logit_bias values must be in [-100, 100], got {value}.")
                bias[token] = float(value)
            self.logit_bias = bias
        if self.allowed_token_ids is not None:
            ids = self.allowed_token_ids
            if not isinstance(ids, list) or not ids:
                raise ValueError(f"allowed_token_ids must be a non-empty list, got {ids!r}.")
            for t in ids:
                if not isinstance(t, int) or isinstance(t, bool) or t < 0:
                    raise ValueError(f"allowed_token_ids must be token ids >= 0, got {t!r}.")
        if self.bad_words is not None:
            if isinstance(self.bad_words, str):
                self.bad_words = [self.bad_words]
            for w in self.bad_words:
                if not isinstance(w, str) or not w.strip():
                    raise ValueError(f"bad_words must be non-empty strings, got {w!r}.")
        if isinstance(self.structured_outputs, dict):
            known = set(StructuredOutputsParams.__dataclass_fields__)
            unknown = sorted(set(self.structured_outputs) - known)
            if unknown:
                raise ValueError(
                    f"unknown structured_outputs fields {unknown}; known: {sorted(known)}"
                )
            self.structured_outputs = StructuredOutputsParams(**self.structured_outputs)
        if self.structured_outputs is not None and not isinstance(
            self.structured_outputs, StructuredOutputsParams
        ):
            raise ValueError(
                "structured_outputs must be a StructuredOutputsParams, got "
                f"{type(self.structured_outputs).__name__}."
            )

    @property
    def sampling_type(self) -> SamplingType:
        if self.temperature < _SAMPLING_EPS:
            return SamplingType.GREEDY
        return SamplingType.RANDOM_SEED if self.seed is not None else SamplingType.RANDOM

    def update_from_generation_config(self, eos_token_id: int | None) -> None:
        if eos_token_id is not None and not self.ignore_eos:
            self.all_stop_token_ids.add(eos_token_id)

    def clone(self) -> SamplingParams:
        return copy.deepcopy(self)
