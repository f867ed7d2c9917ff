"""LLM: offline batch inference, the front door of vllm_mini.

Stage 0/5. Mirrors vllm/entrypoints/llm.py. `LLM(model)` builds an LLMEngine from EngineArgs;
`generate` adds every prompt as a request and steps the engine until all are done — continuous
batching happens inside, the caller just gets outputs back in input order. `chat` renders
conversations with the tokenizer's chat template first (chat_utils.py, shared with the OpenAI
server). Next: engine/llm_engine.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tqdm.auto import tqdm

from vllm_mini.engine.arg_utils import EngineArgs
from vllm_mini.engine.llm_engine import LLMEngine
from vllm_mini.engine.processor import PromptType
from vllm_mini.entrypoints.beam_search import BeamSearchOutput, BeamSearchParams
from vllm_mini.entrypoints.chat_utils import ChatMedia, render_chat
from vllm_mini.lora.request import LoRARequest
from vllm_mini.outputs import RequestOutput
from vllm_mini.sampling_params import RequestOutputKind, SamplingParams

# {"role": ..., "content": str or a list of text parts}, as the OpenAI API spells a message.
ChatMessage = dict[str, Any]


class LLM:
    def __init__(
        self, model: str | None = None, *, dtype: str = "auto", seed: int = 0, **kwargs: Any
    ) -> None:
        kwargs.setdefault("disable_log_stats", True)
        engine_args = EngineArgs.from_kwargs(model=model, dtype=dtype, seed=seed, **kwargs)
        self.llm_engine = LLMEngine.from_engine_args(engine_args)
        self._request_counter = 0

    def shutdown(self) -> None:
        """Stop the worker processes now (stage 8); also done when the LLM is deleted or at exit."""
        engine = getattr(self, "llm_engine", None)  # absent if __init__ failed
        if engine is not None:
            engine.shutdown()

    def __del__(self) -> None:
        self.shutdown()

    def get_tokenizer(self):
        return self.llm_engine.get_tokenizer()

    def generate(
        self,
        prompts: PromptType | Sequence[PromptType],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = True,
        priority: list[int] | None = None,
        lora_request: LoRARequest | Sequence[LoRARequest | None] | None = None,
    ) -> list[RequestOutput]:
        if isinstance(prompts, (str, dict)):
            prompts = [prompts]
        prompts = list(prompts)
        if sampling_params is None:
            sampling_params = SamplingParams()
        if isinstance(sampling_params, SamplingParams):
            params_list = [sampling_params] * len(prompts)
        else:
            params_list = list(sampling_params)
            if len(params_list) != len(prompts):
                raise ValueError(
                    f"got {len(prompts)} prompts but {len(params_list)} sampling_params; "
                    "pass one SamplingParams or one per prompt"
                )
        if priority is not None and len(priority) != len(prompts):
            raise ValueError(f"priority must have one entry per prompt ({len(prompts)})")
        loras = (
            list(lora_request)
            if isinstance(lora_request, (list, tuple))
            else [lora_request] * len(prompts)
        )
        if len(loras) != len(prompts):
            raise ValueError(
                f"lora_request must be one LoRARequest (or None) or one per prompt "
                f"({len(prompts)}), got {len(loras)}"
            )
        request_ids = []
        # Offline, only the finished output is kept: the engine need not build the others
        # (vLLM's LLM does the same).
        final = {id(p): _final_only(p) for p in params_list}  # one copy per distinct params
        params_list = [final[id(p)] for p in params_list]
        try:
            for i, (prompt, params) in enumerate(zip(prompts, params_list)):
                request_id = str(self._request_counter)
                self._request_counter += 1
                self.llm_engine.add_request(
                    request_id,
                    prompt,
                    params,
                    priority=priority[i] if priority else 0,
                    lora_request=loras[i],
                )
                request_ids.append(request_id)
        except ValueError:
            self.llm_engine.abort_request(request_ids)  # all or nothing
            raise
        return self._run_engine(request_ids, use_tqdm)

    def chat(
        self,
        messages: list[ChatMessage] | list[list[ChatMessage]],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = True,
        add_generation_prompt: bool = True,
        chat_template: str | None = None,
        lora_request: LoRARequest | Sequence[LoRARequest | None] | None = None,
    ) -> list[RequestOutput]:
        conversations = messages if messages and isinstance(messages[0], list) else [messages]
        tokenizer = self.get_tokenizer()
        # The same rendering as the OpenAI server's, so both give the model the same token ids.
        prompts = [
            render_chat(
                tokenizer,
                conversation,
                add_generation_prompt=add_generation_prompt,
                chat_template=chat_template,
                media=self._chat_media(),
            )
            for conversation in conversations
        ]
        return self.generate(prompts, sampling_params, use_tqdm=use_tqdm, lora_request=lora_request)

    def _chat_media(self) -> ChatMedia | None:
        """Where a conversation's image parts go (stage 10); None for a text-only model."""
        placeholder = self.llm_engine.processor.image_placeholder
        if placeholder is None:
            return None
        media_path = self.llm_engine.vllm_config.model_config.allowed_local_media_path
        return ChatMedia(placeholder, media_path)

    def beam_search(
        self, prompts: list[PromptType], params: BeamSearchParams
    ) -> list[BeamSearchOutput]:
        """vLLM's `LLM.beam_search`: the best `beam_width` sequences per prompt, best first."""
        from vllm_mini.entrypoints.beam_search import beam_search

        processor = self.llm_engine.processor
        token_prompts = [processor.tokenize_prompt(p)[1] for p in prompts]
        return beam_search(self, token_prompts, params)

    def _run_engine(self, request_ids: list[str], use_tqdm: bool) -> list[RequestOutput]:
        finished: dict[str, RequestOutput] = {}
        bar = tqdm(total=len(request_ids), desc="Processed prompts", disable=not use_tqdm)
        while self.llm_engine.has_unfinished_requests():
            for out in self.llm_engine.step():
                if out.finished:
                    finished[out.request_id] = out
                    bar.update(1)
        bar.close()
        return [finished[r] for r in request_ids]


def _final_only(params: SamplingParams) -> SamplingParams:
    if not isinstance(params, SamplingParams) or params.output_kind == RequestOutputKind.FINAL_ONLY:
        return params
    params = params.clone()
    params.output_kind = RequestOutputKind.FINAL_ONLY
    return params
