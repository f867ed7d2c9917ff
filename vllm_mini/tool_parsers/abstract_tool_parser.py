"""ToolParser: the interface every tool-call format implements, and the registry of formats.

Stage 13. Mirrors vllm/tool_parsers/abstract_tool_parser.py. A model fine-tuned for tools writes
its calls in a format of its own (Hermes `<tool_call>{json}</tool_call>`, Llama's JSON, Python
call syntax, ...); the server is started with `--tool-call-parser NAME` to say which, and
`--enable-auto-tool-choice` to let the model decide when to call (tool_choice "auto").
Next: hermes_tool_parser.py.
"""

from __future__ import annotations

import json
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any


def make_tool_call_id() -> str:
    return f"chatcmpl-tool-{uuid.uuid4().hex}"


@dataclass
class ParsedToolCall:
    name: str
    arguments: str  # the arguments object as JSON text, as OpenAI sends it
    id: str = field(default_factory=make_tool_call_id)


@dataclass
class ExtractedToolCallInformation:
    tools_called: bool
    tool_calls: list[ParsedToolCall]
    content: str | None  # the text around the calls (None when there is none)


class ToolParser(ABC):
    @abstractmethod
    def extract_tool_calls(self, model_output: str) -> ExtractedToolCallInformation:
        """Split a finished output into plain content and tool calls."""

    def __init__(self, tokenizer: Any = None) -> None:
        self.tokenizer = tokenizer


class ToolParserManager:
    """Parsers by the name given to --tool-call-parser."""

    tool_parsers: dict[str, type[ToolParser]] = {}

    @classmethod
    def register(cls, name: str):
        def wrap(parser: type[ToolParser]) -> type[ToolParser]:
            cls.tool_parsers[name] = parser
            return parser

        return wrap

    @classmethod
    def get_tool_parser(cls, name: str) -> type[ToolParser]:
        if name not in cls.tool_parsers:
            raise ValueError(
                f"--tool-call-parser must be one of {sorted(cls.tool_parsers)}, got {name!r}"
            )
        return cls.tool_parsers[name]


def arguments_json(arguments: Any) -> str:
    """OpenAI carries arguments as a JSON string; models write an object (or already a string)."""
    return arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
