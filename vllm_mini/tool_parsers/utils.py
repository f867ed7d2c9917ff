"""Tool calls under a grammar: the JSON schema that tool_choice "required" or a named tool implies.

Stage 13. Mirrors vllm/tool_parsers/utils.py. A named tool_choice constrains the output to the
function's parameters schema: the whole output *is* the arguments. "required" constrains it to a
non-empty JSON array of {"name": one of the tools, "parameters": that tool's schema}; the server
reads the array back into tool_calls. Both work with any model, tool-trained or not, because the
grammar decides the shape and the model only fills in the values. Next: ../entrypoints/openai/.
"""

from __future__ import annotations

import json
from typing import Any

from vllm_mini.tool_parsers.abstract_tool_parser import ParsedToolCall, arguments_json

EMPTY_PARAMETERS = {"type": "object", "properties": {}}


def tool_schema(name: str, parameters: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "properties": {
            "name": {"type": "string", "enum": [name]},
            "parameters": parameters or EMPTY_PARAMETERS,
        },
        "required": ["name", "parameters"],
    }


def get_json_schema_from_tools(
    tool_choice: str | dict[str, Any] | None,
    tools: list[dict[str, Any]] | None,
    parallel_tool_calls: bool = True,
) -> dict[str, Any] | None:
    """The schema that forces the tool choice, or None ("none", "auto": no constraint).

    `tools` are OpenAI function tools as dicts: {"type": "function", "function": {"name",
    "description", "parameters"}}; a named choice is {"type": "function", "function": {"name"}}.
    """
    if not tools or tool_choice in (None, "none", "auto"):
        return None
    functions = {t["function"]["name"]: t["function"].get("parameters") for t in tools}
    if isinstance(tool_choice, dict):
        name = tool_choice["function"]["name"]
        if name not in functions:
            raise ValueError(
                f"tool_choice names function {name!r}, which is not in tools ({sorted(functions)})"
            )
        return functions[name] or EMPTY_PARAMETERS
    schema: dict[str, Any] = {
        "type": "array",
        "minItems": 1,
        "items": {"type": "object", "anyOf": [tool_schema(n, p) for n, p in functions.items()]},
    }
    if not parallel_tool_calls:
        schema["maxItems"] = 1
    return schema


def tool_calls_from_required_output(text: str) -> list[ParsedToolCall]:
    """The JSON array a "required" choice generated, as tool calls (raises on malformed text)."""
    calls = json.loads(text)
    return [ParsedToolCall(c["name"], arguments_json(c.get("parameters", {}))) for c in calls]
