"""The Hermes tool-call format: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`.

Stage 13. Mirrors vllm/tool_parsers/hermes_tool_parser.py. NousResearch's Hermes 2 Pro chat
template (adopted by Qwen2.5 and many others) teaches the model to answer a tool request with one
JSON object per call, each wrapped in <tool_call> tags; text outside the tags is ordinary content.
A block whose JSON does not parse is left in the content rather than guessed at.
Next: utils.py.
"""

from __future__ import annotations

import json
import re

from vllm_mini.tool_parsers.abstract_tool_parser import (
    ExtractedToolCallInformation,
    ParsedToolCall,
    ToolParser,
    ToolParserManager,
    arguments_json,
)

# A closed block, or an unclosed one at the very end (the output hit max_tokens or EOS first).
_TOOL_CALL = re.compile(r"<tool_call>(.*?)</tool_call>|<tool_call>(?!.*</tool_call>)(.*)\Z", re.S)


@ToolParserManager.register("hermes")
class Hermes2ProToolParser(ToolParser):
    def extract_tool_calls(self, model_output: str) -> ExtractedToolCallInformation:
        if "<tool_call>" not in model_output:
            return ExtractedToolCallInformation(False, [], model_output)
        calls: list[ParsedToolCall] = []
        kept: list[str] = []  # text outside the parsed blocks
        cursor = 0
        for match in _TOOL_CALL.finditer(model_output):
            body = (match.group(1) if match.group(1) is not None else match.group(2)).strip()
            try:
                call = json.loads(body)
                name = call["name"]
                arguments = call.get("arguments", call.get("parameters", {}))
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # not a call we can read: it stays in the content
            calls.append(ParsedToolCall(name=name, arguments=arguments_json(arguments)))
            kept.append(model_output[cursor : match.start()])
            cursor = match.end()
        kept.append(model_output[cursor:])
        content = "".join(kept).strip()
        return ExtractedToolCallInformation(bool(calls), calls, content or None)
