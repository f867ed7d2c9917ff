"""POST /v1/chat/completions: a conversation in, the assistant's reply out.

Stage 12. Mirrors vllm/entrypoints/openai/chat_completion/serving.py. The only step chat adds to completions
is the chat template: the model's tokenizer ships a Jinja program that renders the list of
messages into the exact text format the model was fine-tuned on (role markers, end-of-turn tokens)
and, with add_generation_prompt, opens the assistant's turn. From there it is one engine request
with `n` samples. A stream opens each choice with a `{"role": "assistant"}` delta, then sends
content deltas, then the finish reason.
Tool calls (stage 13): the tools go to the chat template; a named tool_choice or "required" was
turned into a JSON-schema constraint by the request (protocol.py), so the output is read back as
the calls; with "auto", the server's tool-call parser (--tool-call-parser) finds them in free
text. A stream holds a tool-calling choice's text back and sends its calls in the final delta.
Next: serving_tokenization.py.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing

from vllm_mini.engine.async_llm import AsyncLLM
from vllm_mini.entrypoints.openai.base_protocol import (
    ChatCompletionNamedToolChoiceParam,
    DeltaToolCall,
    FunctionCall,
    ToolCall,
)
from vllm_mini.entrypoints.openai.metrics import ServerMetrics
from vllm_mini.entrypoints.openai.protocol import (
    ChatCompletionLogProbs,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatCompletionResponseChoice,
    ChatCompletionResponseStreamChoice,
    ChatCompletionStreamResponse,
    ChatLogProb,
    ChatLogProbsContent,
    ChatResponseMessage,
    DeltaMessage,
    ErrorResponse,
    UsageInfo,
)
from vllm_mini.entrypoints.openai.serving_engine import (
    SSE_DONE,
    OpenAIServing,
    StreamDeltas,
    internal_error,
    logger,
    sse_error,
    sse_event,
)
from vllm_mini.entrypoints.openai.serving_models import OpenAIServingModels
from vllm_mini.outputs import CompletionOutput, Logprob, RequestOutput
from vllm_mini.sampling_params import SamplingParams
from vllm_mini.tool_parsers import ToolParserManager
from vllm_mini.tool_parsers.abstract_tool_parser import ParsedToolCall
from vllm_mini.tool_parsers.utils import tool_calls_from_required_output


class OpenAIServingChat(OpenAIServing):
    request_id_prefix = "chatcmpl"

    def __init__(
        self,
        engine: AsyncLLM,
        models: OpenAIServingModels,
        metrics: ServerMetrics | None = None,
        *,
        enable_auto_tools: bool = False,
        tool_parser: str | None = None,
    ) -> None:
        super().__init__(engine, models, metrics)
        self.enable_auto_tools = enable_auto_tools
        parser = ToolParserManager.get_tool_parser(tool_parser) if tool_parser else None
        self.tool_parser = parser(self.tokenizer) if parser else None

    async def create_chat_completion(
        self, request: ChatCompletionRequest
    ) -> ChatCompletionResponse | ErrorResponse | AsyncGenerator[str, None]:
        """An ErrorResponse, the whole response, or (stream=true) a generator of SSE events."""
        # `model` names the base model or one of its LoRA adapters (None: no adapter).
        lora_request, error = self.models.resolve(request.model)
        if error is not None:
            return error
        self.log_ignored_fields(request)
        try:
            if request.tool_choice == "auto" and not (self.enable_auto_tools and self.tool_parser):
                raise ValueError(
                    'tool_choice "auto" needs the server started with --enable-auto-tool-choice '
                    "and --tool-call-parser"
                )
            params = request.to_sampling_params()
            tools = [t.model_dump() for t in request.tools] if request.tools else None
            prompt = self.render_chat(request.messages, request.add_generation_prompt, tools)
            if request.cache_salt is not None:
                prompt = {**prompt, "cache_salt": request.cache_salt}
            self.validate_prompt(prompt, params, input_name="messages")
            request_id = self.request_id()
            queues = await self.add_requests([prompt], [params], request_id, lora_request)
        except ValueError as e:
            return self.bad_request(e, request)

        results = self.generate([prompt], [params], request_id, queues)
        model = self.models.model_name(lora_request)
        if request.stream:
            num_prompt_tokens = len(prompt["prompt_token_ids"])
            return self.stream(request, num_prompt_tokens, params, results, request_id, model)
        final: RequestOutput | None = None
        async with aclosing(results) as stream:
            async for _, out in stream:
                final = out
        assert final is not None and final.finished, "the stream ends with the finished output"
        return self.full_response(request, final, request_id, model)

    def full_response(
        self, request: ChatCompletionRequest, final: RequestOutput, request_id: str, model: str
    ) -> ChatCompletionResponse:
        choices = []
        for c in final.outputs:
            content, calls, finish_reason = self._assistant_reply(request, c)
            choices.append(
                ChatCompletionResponseChoice(
                    index=c.index,
                    message=ChatResponseMessage(
                        content=content,
                        tool_calls=[
                            ToolCall(
                                id=t.id, function=FunctionCall(name=t.name, arguments=t.arguments)
                            )
                            for t in calls
                        ],
                    ),
                    logprobs=self._logprobs(c, range(len(c.token_ids)), request.top_logprobs or 0)
                    if request.logprobs
                    else None,
                    finish_reason=finish_reason,
                    stop_reason=c.stop_reason,
                )
            )
        num_prompt = len(final.prompt_token_ids)
        num_generated = sum(len(c.token_ids) for c in final.outputs)
        usage = UsageInfo(
            prompt_tokens=num_prompt,
            completion_tokens=num_generated,
            total_tokens=num_prompt + num_generated,
        )
        return ChatCompletionResponse(id=request_id, model=model, choices=choices, usage=usage)

    async def stream(
        self,
        request: ChatCompletionRequest,
        num_prompt_tokens: int,
        params: SamplingParams,
        results: AsyncIterator[tuple[int, RequestOutput]],
        request_id: str,
        model: str,
    ) -> AsyncGenerator[str, None]:
        chunk_base = ChatCompletionStreamResponse(id=request_id, model=model, choices=[])
        options = request.stream_options
        deltas = StreamDeltas(request.n, params)
        tool_mode = self._calls_tools(request)
        num_generated = [0] * request.n

        def usage() -> UsageInfo:
            total = sum(num_generated)
            return UsageInfo(
                prompt_tokens=num_prompt_tokens,
                completion_tokens=total,
                total_tokens=num_prompt_tokens + total,
            )

        def chunk(choice: ChatCompletionResponseStreamChoice) -> str:
            extra = usage() if options is not None and options.continuous_usage_stats else None
            return sse_event(chunk_base.model_copy(update={"choices": [choice], "usage": extra}))

        try:
            # OpenAI opens every choice with the role, before any content exists.
            for index in range(request.n):
                opening = DeltaMessage(role="assistant", content="")
                yield chunk(ChatCompletionResponseStreamChoice(index=index, delta=opening))
            async with aclosing(results) as stream:
                async for _, out in stream:
                    for c in out.outputs:
                        if tool_mode and not c.finished():
                            continue  # calls are sent whole, with the finish reason
                        delta = deltas.next(c.index, c)
                        if delta is None:
                            continue
                        text, positions = delta
                        num_generated[c.index] = len(c.token_ids)
                        logprobs = None
                        if request.logprobs:
                            logprobs = self._logprobs(c, positions, request.top_logprobs or 0)
                        message, finish_reason = DeltaMessage(content=text), c.finish_reason
                        if tool_mode:
                            content, calls, finish_reason = self._assistant_reply(request, c)
                            message = DeltaMessage(
                                content=content or None,
                                tool_calls=[
                                    DeltaToolCall(
                                        index=k,
                                        id=t.id,
                                        function=FunctionCall(name=t.name, arguments=t.arguments),
                                    )
                                    for k, t in enumerate(calls)
                                ]
                                or None,
                            )
                        choice = ChatCompletionResponseStreamChoice(
                            index=c.index,
                            delta=message,
                            logprobs=logprobs,
                            finish_reason=finish_reason,
                            stop_reason=c.stop_reason,
                        )
                        yield chunk(choice)
            if options is not None and options.include_usage:
                yield sse_event(chunk_base.model_copy(update={"usage": usage()}))
        except ValueError as e:
            yield sse_error(self.bad_request(e, request))
        except Exception as e:  # noqa: BLE001 - the stream has begun: report in-band
            logger.exception("chat stream %s failed", request_id)
            yield sse_error(internal_error(e))
        yield SSE_DONE

    def _calls_tools(self, request: ChatCompletionRequest) -> bool:
        return request.forces_tool_call or (
            bool(request.tools) and request.tool_choice == "auto" and self.tool_parser is not None
        )

    def _assistant_reply(
        self, request: ChatCompletionRequest, out: CompletionOutput
    ) -> tuple[str | None, list[ParsedToolCall], str | None]:
        """(content, tool calls, finish reason) of one finished choice."""
        text, finish_reason = out.text, out.finish_reason
        if not self._calls_tools(request):
            return text, [], finish_reason
        if request.forces_tool_call:
            if isinstance(request.tool_choice, ChatCompletionNamedToolChoiceParam):
                # The whole output is the arguments object (vLLM: finish_reason stays "stop").
                return "", [ParsedToolCall(request.tool_choice.function.name, text)], finish_reason
            try:
                calls = tool_calls_from_required_output(text)
            except (ValueError, KeyError, TypeError):
                return text, [], finish_reason  # cut short (max_tokens): no complete calls
            return "", calls, "tool_calls" if finish_reason == "stop" else finish_reason
        info = self.tool_parser.extract_tool_calls(text)
        if not info.tools_called:
            return text, [], finish_reason
        return info.content, info.tool_calls, "tool_calls"

    @staticmethod
    def _logprobs(out: CompletionOutput, positions: range, top_k: int) -> ChatCompletionLogProbs:
        """Chat's logprobs: per token its text, logprob, UTF-8 bytes and the `top_k` best."""
        content: list[ChatLogProbsContent] = []
        logprobs = out.logprobs or []
        for t in positions:
            if t >= len(logprobs):
                break
            entry = logprobs[t]
            sampled = entry[out.token_ids[t]]
            # The entry holds the sampled token (at its true rank) and the top-k (ranks 1..k).
            best = sorted(
                (lp for lp in entry.values() if lp.rank is not None and lp.rank <= top_k),
                key=lambda lp: lp.rank,
            )
            top = [_chat_logprob(lp) for lp in best]
            content.append(
                ChatLogProbsContent(**_chat_logprob(sampled).model_dump(), top_logprobs=top)
            )
        return ChatCompletionLogProbs(content=content)


def _chat_logprob(lp: Logprob) -> ChatLogProb:
    token = lp.decoded_token or ""
    return ChatLogProb(token=token, logprob=lp.logprob, bytes=list(token.encode("utf-8")))
