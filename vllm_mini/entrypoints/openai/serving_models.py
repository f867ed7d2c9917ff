"""Which model names this server answers to: GET /v1/models and the `model` field check.

Stage 12. Mirrors vllm/entrypoints/openai/models/serving.py. A server runs one model but may
publish it under a name of the operator's choosing (`--served-model-name`); clients must use that
name, and any other name gets OpenAI's 404 NotFoundError, so a client pointed at the wrong server
fails loudly instead of silently talking to another model. vLLM keeps LoRA adapters here too.
Next: serving_engine.py.
"""

from __future__ import annotations

from http import HTTPStatus

from vllm_mini.entrypoints.openai.protocol import ErrorInfo, ErrorResponse, ModelCard, ModelList


class OpenAIServingModels:
    def __init__(self, served_model_name: str, model_path: str, max_model_len: int) -> None:
        self.served_model_name = served_model_name
        self.model_path = model_path
        self.max_model_len = max_model_len

    def is_served(self, model_name: str | None) -> bool:
        # An absent or empty `model` means "the one you serve", as in vLLM.
        return not model_name or model_name == self.served_model_name

    def check_model(self, model_name: str | None) -> ErrorResponse | None:
        """None when the name is ours; otherwise the 404 to send back."""
        if self.is_served(model_name):
            return None
        return ErrorResponse(
            error=ErrorInfo(
                message=f"The model `{model_name}` does not exist; this server serves "
                f"`{self.served_model_name}`.",
                type="NotFoundError",
                param="model",
                code=HTTPStatus.NOT_FOUND,
            )
        )

    def show_available_models(self) -> ModelList:
        card = ModelCard(
            id=self.served_model_name, root=self.model_path, max_model_len=self.max_model_len
        )
        return ModelList(data=[card])
