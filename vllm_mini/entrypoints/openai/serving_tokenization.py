"""POST /tokenize and /detokenize: the server's tokenizer, for clients that count tokens.

Stage 12. Mirrors vllm/entrypoints/serve/tokenize/serving.py. Clients use these to budget a
prompt against max_model_len, or to see exactly what a chat template produces, with the very
tokenizer and template the engine uses. Not OpenAI endpoints (OpenAI has none); the shapes are
vLLM's. Next: api_server.py.
"""

from __future__ import annotations

from vllm_mini.entrypoints.openai.protocol import (
    ErrorResponse,
)
from vllm_mini.entrypoints.openai.serve_protocol import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
)
from vllm_mini.entrypoints.openai.serving_engine import OpenAIServing


class OpenAIServingTokenization(OpenAIServing):
    async def create_tokenize(self, request: TokenizeRequest) -> TokenizeResponse | ErrorResponse:
        error = self.models.check_model(request.model)
        if error is not None:
            return error
        try:
            if request.messages is not None:
                prompt = self.render_chat(request.messages, request.add_generation_prompt)
                tokens = prompt["prompt_token_ids"]
                if request.add_special_tokens:
                    tokens = self.tokenizer.encode(prompt["prompt"], add_special_tokens=True)
            else:
                add_special = request.add_special_tokens is not False
                tokens = self.tokenizer.encode(request.prompt, add_special_tokens=add_special)
        except ValueError as e:
            return self.bad_request(e, request)
        return TokenizeResponse(tokens=tokens, count=len(tokens), max_model_len=self.max_model_len)

    async def create_detokenize(
        self, request: DetokenizeRequest
    ) -> DetokenizeResponse | ErrorResponse:
        error = self.models.check_model(request.model)
        if error is not None:
            return error
        vocab_size = self.engine.model_config.vocab_size
        bad = [t for t in request.tokens if not 0 <= t < vocab_size]
        if bad:
            return self.bad_request(
                ValueError(f"tokens must be ids in [0, {vocab_size}), got {bad[:5]}"), request
            )
        return DetokenizeResponse(prompt=self.tokenizer.decode(request.tokens))
