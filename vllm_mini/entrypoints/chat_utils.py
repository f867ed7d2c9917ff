"""Chat: from a conversation to the prompt text and token ids the model was fine-tuned on.

Stage 0/12. Mirrors vllm/entrypoints/chat_utils.py. Both front doors go through here: `LLM.chat`
(offline) and the OpenAI server's `render_chat` (/v1/chat/completions, /tokenize), so the same
messages become the same token ids either way. Three steps: `parse_chat_messages` turns message
objects or dicts into the plain turns a template reads; `apply_chat_template` runs the tokenizer's
template (a Jinja program shipped with the model); `encode_prompt` tokenizes without a second BOS.
Next: llm.py (offline) or openai/serving_engine.py (server).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, TypedDict

import jinja2
from transformers import PreTrainedTokenizerBase

# One turn as a chat template reads it: {"role": ..., "content": str}, sometimes "name".
ConversationMessage = dict[str, Any]


class ChatPrompt(TypedDict):
    """A rendered conversation, in the dict form the engine takes as a prompt."""

    prompt: str
    prompt_token_ids: list[int]


def content_text(content: str | list[Any] | None) -> str:
    """A message's content as one string: text parts are joined with newlines, as vLLM does."""
    if content is None or isinstance(content, str):
        return content or ""
    texts = []
    for part in content:
        is_text = isinstance(part, Mapping) and part.get("type") == "text"
        if not is_text or not isinstance(part.get("text"), str):
            raise ValueError(
                'content parts must be {"type": "text", "text": str}; vllm_mini is text-only, '
                f"got {part!r}"
            )
        texts.append(part["text"])
    return "\n".join(texts)


def parse_chat_messages(messages: Iterable[Any]) -> list[ConversationMessage]:
    """Message dicts, or objects with role/content/name (the server's ChatMessage) -> turns."""
    conversation: list[ConversationMessage] = []
    for message in messages:
        if isinstance(message, Mapping):
            if "role" not in message:
                raise ValueError(f"every chat message needs a 'role', got {dict(message)!r}")
            # Other keys stay: some templates read more than role and content.
            turn = dict(message)
            turn["content"] = content_text(message.get("content"))
        else:
            turn = {"role": message.role, "content": content_text(message.content)}
            if getattr(message, "name", None):
                turn["name"] = message.name
        conversation.append(turn)
    return conversation


def apply_chat_template(
    tokenizer: PreTrainedTokenizerBase,
    conversation: list[ConversationMessage],
    *,
    add_generation_prompt: bool = True,
    chat_template: str | None = None,
    tools: list[dict[str, Any]] | None = None,
) -> str:
    """Render the conversation as text; `add_generation_prompt` opens the assistant's turn.
    `tools` (OpenAI function tools) are the template's to describe; one without tool support
    ignores them."""
    try:
        return tokenizer.apply_chat_template(
            conversation,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            chat_template=chat_template,
            tools=tools,
        )
    except (jinja2.TemplateError, ValueError) as e:
        # Templates reject what their model was not trained on (e.g. roles out of order), and
        # a tokenizer without a template refuses outright: both are the caller's mistake.
        raise ValueError(f"messages could not be rendered by the chat template: {e}") from e


def encode_prompt(
    tokenizer: PreTrainedTokenizerBase, text: str, *, from_chat_template: bool = False
) -> list[int]:
    """Token ids of a prompt, with exactly one BOS: a chat template writes BOS into the text
    itself, so the tokenizer must not add it again; a plain prompt gets it from the tokenizer.
    A second BOS is a token the model never saw in training, and it changes the output."""
    return tokenizer.encode(text, add_special_tokens=not from_chat_template)


def render_chat(
    tokenizer: PreTrainedTokenizerBase,
    messages: Iterable[Any],
    *,
    add_generation_prompt: bool = True,
    chat_template: str | None = None,
    tools: list[dict[str, Any]] | None = None,
) -> ChatPrompt:
    """All three steps: messages -> turns -> template text -> token ids."""
    conversation = parse_chat_messages(messages)
    text = apply_chat_template(
        tokenizer,
        conversation,
        add_generation_prompt=add_generation_prompt,
        chat_template=chat_template,
        tools=tools,
    )
    return ChatPrompt(
        prompt=text, prompt_token_ids=encode_prompt(tokenizer, text, from_chat_template=True)
    )
