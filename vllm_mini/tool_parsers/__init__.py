"""Tool calling: from a model's text to OpenAI `tool_calls`. Stage 13. Mirrors vllm/tool_parsers/.

Two ways to get a tool call out of a model: constrain the output with a JSON schema built from the
tools (tool_choice "required" or a named function; utils.py), or let the model write freely and
parse the calls out of its text with the format its chat template taught it (tool_choice "auto";
hermes_tool_parser.py). Next: abstract_tool_parser.py.
"""

from vllm_mini.tool_parsers.abstract_tool_parser import (
    ExtractedToolCallInformation,
    ToolParser,
    ToolParserManager,
)
from vllm_mini.tool_parsers.hermes_tool_parser import Hermes2ProToolParser

__all__ = [
    "ExtractedToolCallInformation",
    "Hermes2ProToolParser",
    "ToolParser",
    "ToolParserManager",
]
