"""Chat: from a conversation to the prompt text and token ids the model was fine-tuned on.

Stage 0/12. Mirrors vllm/entrypoints/chat_utils.py. Both front doors go through here: `LLM.chat`
(offline) and the OpenAI server's `render_chat` (/v1/chat/completions, /tokenize), so the same
messages become the same token ids either way. Three steps: `parse_chat_messages` turns message
objects or dicts into the plain turns a template reads; `apply_chat_template` runs the tokenizer's
template (a Jinja program shipped with the model); `encode_prompt` tokenizes without a second BOS.
Image parts (stage 10, multimodal models only) are loaded here and replaced in the text by the
model's placeholder token; the images travel beside the prompt as its multi_modal_data.
Next: llm.py (offline) or openai/serving_engine.py (server).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypedDict

import jinja2
from PIL import Image
from transformers import PreTrainedTokenizerBase

from vllm_mini.multimodal.image import check_image, load_image_url

# One turn as a chat template reads it: {"role": ..., "content": str}, sometimes "name".
ConversationMessage = dict[str, Any]


class ChatPrompt(TypedDict):
    """A rendered conversation, in the dict form the engine takes as a prompt."""

    prompt: str
    prompt_token_ids: list[int]


class MultiModalChatPrompt(ChatPrompt, total=False):
    multi_modal_data: dict[str, list[Image.Image]]  # stage 10: the conversation's images


@dataclass
class ChatMedia:
    """How a multimodal model reads image parts: its placeholder text, and where file:// URLs
    may point (None: nowhere). `images` collects the conversation's images in order."""

    placeholder: str
    allowed_local_media_path: str | None = None
    images: list[Image.Image] = field(default_factory=list)

    def load(self, part: Mapping) -> None:
        if part.get("type") == "image_pil":  # vLLM's offline-only part: a PIL image itself
            self.images.append(check_image(part.get("image_pil")))
            return
        url = part.get("image_url")
        url = url.get("url") if isinstance(url, Mapping) else url
        if not isinstance(url, str):
            raise ValueError(f'image_url parts need {{"image_url": {{"url": str}}}}, got {part!r}')
        self.images.append(load_image_url(url, self.allowed_local_media_path))


def content_text(content: str | list[Any] | None, media: ChatMedia | None = None) -> str:
    """A message's content as one string: text parts are joined with newlines, as vLLM does.
    Each image part becomes the model's placeholder; they go first, one per line (vLLM's
    layout for a model whose chat template has no image slot)."""
    if content is None or isinstance(content, str):
        return content or ""
    texts, num_images = [], 0
    for part in content:
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind in ("image_url", "image_pil"):
            if media is None:
                raise ValueError(
                    f"content parts must be text for this text-only model; {kind} parts need a "
                    "multimodal model"
                )
            media.load(part)
            num_images += 1
            continue
        if kind != "text" or not isinstance(part.get("text"), str):
            raise ValueError(
                'content parts must be {"type": "text", "text": str} or, for a multimodal '
                f'model, {{"type": "image_url", "image_url": {{"url": ...}}}}; got {part!r}'
            )
        texts.append(part["text"])
    return "\n".join([media.placeholder] * num_images + texts) if num_images else "\n".join(texts)


def parse_chat_messages(
    messages: Iterable[Any], media: ChatMedia | None = None
) -> list[ConversationMessage]:
    """Message dicts, or objects with role/content/name (the server's ChatMessage) -> turns."""
    conversation: list[ConversationMessage] = []
    for message in messages:
        if isinstance(message, Mapping):
            if "role" not in message:
                raise ValueError(f"every chat message needs a 'role', got {dict(message)!r}")
            # Other keys stay: some templates read more than role and content.
            turn = dict(message)
            turn["content"] = content_text(message.get("content"), media)
        else:
            turn = {"role": message.role, "content": content_text(message.content, media)}
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
    media: ChatMedia | None = None,
) -> MultiModalChatPrompt:
    """All three steps: messages -> turns -> template text -> token ids (+ the images)."""
    conversation = parse_chat_messages(messages, media)
    text = apply_chat_template(
        tokenizer,
        conversation,
        add_generation_prompt=add_generation_prompt,
        chat_template=chat_template,
        tools=tools,
    )
    prompt = MultiModalChatPrompt(
        prompt=text, prompt_token_ids=encode_prompt(tokenizer, text, from_chat_template=True)
    )
    if media is not None and media.images:
        prompt["multi_modal_data"] = {"image": media.images}
    return prompt
