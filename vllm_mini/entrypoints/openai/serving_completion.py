"""POST /v1/completions: prompts in, text out, whole or streamed as server-sent events.

Stage 12. Mirrors vllm/entrypoints/openai/completion/serving.py. `prompt` may be one string, a
list of strings, one list of token ids, or a list of them; each prompt is its own engine request
and yields `n` choices, numbered prompt_index * n + sample_index as OpenAI (and vLLM) number them.
A streamed response sends each choice's new text as it is generated, then an optional usage chunk,
then `data: [DONE]`. Next: serving_chat.py.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing

from vllm_mini.entrypoints.openai.protocol import (
    CompletionLogProbs,
    CompletionRequest,
    CompletionResponse,
    CompletionResponseChoice,
    CompletionStreamResponse,
    ErrorResponse,
    UsageInfo,
)
from vllm_mini.entrypoints.openai.serving_engine import (
    SSE_DONE,
    EnginePrompt,
    OpenAIServing,
    StreamDeltas,
    internal_error,
    logger,
    sse_error,
    sse_event,
)
from vllm_mini.outputs import CompletionOutput, RequestOutput, SampleLogprobs
from vllm_mini.sampling_params import SamplingParams


def split_prompts(prompt: str | list) -> list[str | list[int]]:
    """One string or one token-id list is a single prompt; any other list holds several."""
    if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)):
        return [prompt]
    return list(prompt)


class OpenAIServingCompletion(OpenAIServing):
    request_id_prefix = "cmpl"

    async def create_completion(
        self, request: CompletionRequest
    ) -> CompletionResponse | ErrorResponse | AsyncGenerator[str, None]:
        """An ErrorResponse, the whole response, or (stream=true) a generator of SSE events."""
        # `model` names the base model or one of its LoRA adapters (None: no adapter).
        lora_request, error = self.models.resolve(request.model)
        if error is not None:
            return error
        self.log_ignored_fields(request)
        if request.echo and request.logprobs is not None:
            return self.bad_request(
                ValueError("echo with logprobs is not supported (it needs prompt logprobs)")
            )
        try:
            base_params = request.to_sampling_params()
            prompts = [self.tokenize_prompt(p) for p in split_prompts(request.prompt)]
            if request.cache_salt is not None:
                prompts = [{**p, "cache_salt": request.cache_salt} for p in prompts]
            for p in prompts:
                self.validate_prompt(p, base_params)
            params = [base_params] * len(prompts)
            request_id = self.request_id()
            queues = await self.add_requests(prompts, params, request_id, lora_request)
        except ValueError as e:
            return self.bad_request(e, request)

        results = self.generate(prompts, params, request_id, queues)
        model = self.models.model_name(lora_request)
        if request.stream:
            return self.stream(request, prompts, params[0], results, request_id, model)
        final: list[RequestOutput | None] = [None] * len(prompts)
        async with aclosing(results) as stream:
            async for i, out in stream:
                final[i] = out
        return self.full_response(request, prompts, final, request_id, model)

    def full_response(
        self,
        request: CompletionRequest,
        prompts: list[EnginePrompt],
        final: list[RequestOutput | None],
        request_id: str,
        model: str,
    ) -> CompletionResponse:
        choices: list[CompletionResponseChoice] = []
        usage = UsageInfo()
        for i, out in enumerate(final):
            assert out is not None and out.finished, "every prompt's stream ends finished"
            prefix = self._prompt_text(prompts[i]) if request.echo else ""
            for c in out.outputs:
                logprobs = None
                if request.logprobs is not None:
                    logprobs = self._logprobs(c, range(len(c.token_ids)), len(prefix))
                choices.append(
                    CompletionResponseChoice(
                        index=i * request.n + c.index,
                        text=prefix + c.text,
                        logprobs=logprobs,
                        finish_reason=c.finish_reason,
                        stop_reason=c.stop_reason,
                        prompt_logprobs=_prompt_logprobs(out),
                    )
                )
                usage.completion_tokens += len(c.token_ids)
            usage.prompt_tokens += len(out.prompt_token_ids)
        usage.total_tokens = usage.prompt_tokens + usage.completion_tokens
        return CompletionResponse(id=request_id, model=model, choices=choices, usage=usage)

    async def stream(
        self,
        request: CompletionRequest,
        prompts: list[EnginePrompt],
        params: SamplingParams,
        results: AsyncIterator[tuple[int, RequestOutput]],
        request_id: str,
        model: str,
    ) -> AsyncGenerator[str, None]:
        n = request.n
        deltas = StreamDeltas(len(prompts) * n, params)
        chunk_base = CompletionStreamResponse(id=request_id, model=model, choices=[])
        options = request.stream_options
        keep = params.truncate_prompt_tokens
        keep = self.max_model_len if keep == -1 else keep
        prompt_tokens = [
            len(p["prompt_token_ids"][-keep:] if keep else p["prompt_token_ids"]) for p in prompts
        ]
        completion_tokens = [0] * (len(prompts) * n)
        try:
            async with aclosing(results) as stream:
                async for i, out in stream:
                    for c in out.outputs:
                        choice = i * n + c.index
                        first = deltas.sent_tokens[choice] == 0 and deltas.sent_chars[choice] == 0
                        delta = deltas.next(choice, c)
                        if delta is None:
                            continue
                        text, positions = delta
                        logprobs = None
                        if request.logprobs is not None:
                            offset = deltas.sent_chars[choice] - len(text)
                            logprobs = self._logprobs(c, positions, offset)
                        if request.echo and first:
                            text = self._prompt_text(prompts[i]) + text
                        completion_tokens[choice] = len(c.token_ids)
                        chunk_choice = CompletionResponseChoice(
                            index=choice,
                            text=text,
                            logprobs=logprobs,
                            finish_reason=c.finish_reason,
                            stop_reason=c.stop_reason,
                        )
                        usage = None
                        if options is not None and options.continuous_usage_stats:
                            usage = _usage(prompt_tokens, completion_tokens)
                        yield sse_event(
                            chunk_base.model_copy(
                                update={"choices": [chunk_choice], "usage": usage}
                            )
                        )
            if options is not None and options.include_usage:
                usage = _usage(prompt_tokens, completion_tokens)
                yield sse_event(chunk_base.model_copy(update={"usage": usage}))
        except ValueError as e:
            yield sse_error(self.bad_request(e, request))
        except Exception as e:  # noqa: BLE001 - the stream has begun: report in-band
            logger.exception("completion stream %s failed", request_id)
            yield sse_error(internal_error(e))
        yield SSE_DONE

    def _prompt_text(self, prompt: EnginePrompt) -> str:
        if prompt["prompt"] is not None:
            return prompt["prompt"]
        return self.tokenizer.decode(prompt["prompt_token_ids"])

    @staticmethod
    def _logprobs(out: CompletionOutput, positions: range, text_offset: int) -> CompletionLogProbs:
        """OpenAI's legacy logprobs: per token its text, logprob, offset and the top-k dict."""
        result = CompletionLogProbs()
        logprobs: SampleLogprobs = out.logprobs or []
        for t in positions:
            if t >= len(logprobs):
                break
            entry = logprobs[t]
            sampled = entry[out.token_ids[t]]
            token = sampled.decoded_token or ""
            result.tokens.append(token)
            result.token_logprobs.append(sampled.logprob)
            # The sampled token plus the top-k, as vLLM returns them (so up to k + 1 entries).
            result.top_logprobs.append(
                {lp.decoded_token or "": lp.logprob for lp in entry.values()}
            )
            result.text_offset.append(text_offset)
            text_offset += len(token)
        return result


def _usage(prompt_tokens: list[int], completion_tokens: list[int]) -> UsageInfo:
    p, c = sum(prompt_tokens), sum(completion_tokens)
    return UsageInfo(prompt_tokens=p, completion_tokens=c, total_tokens=p + c)


def _prompt_logprobs(out: RequestOutput) -> list | None:
    if out.prompt_logprobs is None:
        return None
    return [
        None
        if entry is None
        else {
            tok: {"logprob": lp.logprob, "rank": lp.rank, "decoded_token": lp.decoded_token}
            for tok, lp in entry.items()
        }
        for entry in out.prompt_logprobs
    ]
