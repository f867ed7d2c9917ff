"""Which model names this server answers to: GET /v1/models, the `model` field, LoRA adapters.

Stage 12. Mirrors vllm/entrypoints/openai/models/serving.py. A server runs one model but may
publish it under a name of the operator's choosing (`--served-model-name`); clients must use that
name, and any other name gets OpenAI's 404 NotFoundError, so a client pointed at the wrong server
fails loudly instead of silently talking to another model.

With LoRA (stage 9) every adapter is one more model name: `model="sql-lora"` runs the base model
with that adapter. This class owns the name -> LoRARequest table: adapters given at start-up
(`--lora-modules`) and those loaded or unloaded at run time (/v1/load_lora_adapter). Each gets
the next `lora_int_id` and ids are never reused: the engine keys prefix-cache blocks by the id,
so a reused id could hand a new adapter the KV blocks an old one computed.
Next: serving_engine.py.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from http import HTTPStatus

from vllm_mini.engine.async_llm import AsyncLLM, LoRAInUseError
from vllm_mini.entrypoints.openai.protocol import (
    ErrorInfo,
    ErrorResponse,
)
from vllm_mini.entrypoints.openai.serve_protocol import (
    LoadLoRAAdapterRequest,
    ModelCard,
    ModelList,
    UnloadLoRAAdapterRequest,
)
from vllm_mini.lora.request import LoRARequest


@dataclass(frozen=True)
class LoRAModulePath:
    """One `--lora-modules` entry: the name clients use, and the adapter's PEFT directory."""

    name: str
    path: str
    base_model_name: str | None = None  # shown as the card's `parent`; default: the served name


_JSON_KEYS = {"name", "path", "base_model_name"}


def parse_lora_module(text: str) -> LoRAModulePath:
    """`name=path`, or vLLM's JSON form `{"name": ..., "path": ..., "base_model_name": ...}`.

    Raises ValueError naming what is wrong (argparse shows it next to the flag)."""
    text = text.strip()
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"not valid JSON ({e}): {text!r}") from e
        if not isinstance(data, dict):
            raise ValueError(f"the JSON form must be an object, got {text!r}")
        unknown = sorted(set(data) - _JSON_KEYS)
        if unknown:
            raise ValueError(f"unknown keys {unknown} (allowed: {sorted(_JSON_KEYS)})")
        name, path, base = data.get("name"), data.get("path"), data.get("base_model_name")
        for key, value in (("name", name), ("path", path)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"'{key}' must be a non-empty string, got {value!r}")
        if base is not None and (not isinstance(base, str) or not base):
            raise ValueError(f"'base_model_name' must be a non-empty string, got {base!r}")
        return LoRAModulePath(name, path, base)
    name, sep, path = text.partition("=")  # the first '=': a path may hold more of them
    if not sep or not name or not path:
        raise ValueError(
            f"expected name=path or a JSON object with 'name' and 'path', got {text!r}"
        )
    return LoRAModulePath(name, path)


def _error(message: str, err_type: str, status: HTTPStatus, param: str | None) -> ErrorResponse:
    return ErrorResponse(
        error=ErrorInfo(message=message, type=err_type, param=param, code=int(status))
    )


class OpenAIServingModels:
    def __init__(
        self,
        served_model_name: str,
        model_path: str,
        max_model_len: int,
        engine: AsyncLLM | None = None,
    ) -> None:
        self.served_model_name = served_model_name
        self.model_path = model_path
        self.max_model_len = max_model_len
        self.engine = engine
        self.lora_requests: dict[str, LoRARequest] = {}  # adapter name -> its request
        self.lora_parents: dict[str, str] = {}  # adapter name -> the card's `parent`
        self._last_lora_id = 0
        # Loads and unloads await the engine core; one at a time, so two loads of one name
        # cannot both pass the "name is free" check.
        self._lora_lock = asyncio.Lock()

    # ---- names -------------------------------------------------------------------------------

    def is_served(self, model_name: str | None) -> bool:
        # An absent or empty `model` means "the base model you serve", as in vLLM.
        return not model_name or model_name == self.served_model_name

    def resolve(self, model_name: str | None) -> tuple[LoRARequest | None, ErrorResponse | None]:
        """(the adapter to run with, None) for a name we serve (no adapter for the base model);
        (None, the 404 to send back) for any other name."""
        if self.is_served(model_name):
            return None, None
        lora = self.lora_requests.get(model_name)
        if lora is not None:
            return lora, None
        names = ", ".join(f"`{n}`" for n in [self.served_model_name, *self.lora_requests])
        message = f"The model `{model_name}` does not exist. This server serves: {names}."
        return None, _error(message, "NotFoundError", HTTPStatus.NOT_FOUND, "model")

    def check_model(self, model_name: str | None) -> ErrorResponse | None:
        """None when the name is ours (the base model or an adapter); otherwise the 404."""
        return self.resolve(model_name)[1]

    def model_name(self, lora_request: LoRARequest | None) -> str:
        """The `model` a response reports: the adapter's name when one ran, as in vLLM."""
        return lora_request.lora_name if lora_request is not None else self.served_model_name

    def show_available_models(self) -> ModelList:
        cards = [
            ModelCard(
                id=self.served_model_name, root=self.model_path, max_model_len=self.max_model_len
            )
        ]
        for name, lora in self.lora_requests.items():
            cards.append(ModelCard(id=name, root=lora.lora_path, parent=self.lora_parents[name]))
        return ModelList(data=cards)

    # ---- adapters ----------------------------------------------------------------------------

    def _next_lora_request(self, name: str, path: str) -> LoRARequest:
        # Every attempt takes a fresh id, even one that fails: an id is never handed out twice.
        self._last_lora_id += 1
        return LoRARequest(name, self._last_lora_id, path)

    def _name_problem(self, name: str) -> str | None:
        if name == self.served_model_name:
            return f"The LoRA adapter name '{name}' is the served base model's name."
        if name in self.lora_requests:
            return f"The LoRA adapter '{name}' is already loaded; unload it first."
        return None

    def load_static_loras(self, modules: list[LoRAModulePath]) -> None:
        """`--lora-modules`, at start-up: each is checked and registered, or start-up stops with
        a ValueError naming the module. Called before the server runs, when the engine has no
        worker thread yet, so the LLMEngine is called directly (afterwards only through the
        AsyncLLM inbox)."""
        assert self.engine is not None and self.engine._loop_task is None, (
            "static LoRA modules are loaded before the engine starts serving"
        )
        if modules and self.engine.engine.vllm_config.lora_config is None:
            names = ", ".join(m.name for m in modules)
            raise ValueError(f"--lora-modules ({names}) needs --enable-lora: LoRA is off")
        for module in modules:
            problem = self._name_problem(module.name)
            if problem is not None:
                raise ValueError(f"--lora-modules {module.name}: {problem}")
            lora = self._next_lora_request(module.name, module.path)
            try:
                self.engine.engine.add_lora(lora)
            except ValueError as e:
                raise ValueError(f"--lora-modules {module.name}={module.path}: {e}") from e
            self.lora_requests[module.name] = lora
            self.lora_parents[module.name] = module.base_model_name or self.served_model_name

    async def load_lora_adapter(self, request: LoadLoRAAdapterRequest) -> str | ErrorResponse:
        """POST /v1/load_lora_adapter: a 400 naming the problem, or a short success text."""
        name, path = request.lora_name, request.lora_path
        if not name or not path:
            field = "lora_name" if not name else "lora_path"
            return _error(
                f"{field} must be a non-empty string",
                "BadRequestError",
                HTTPStatus.BAD_REQUEST,
                field,
            )
        async with self._lora_lock:
            problem = self._name_problem(name)
            if problem is not None:
                return _error(problem, "BadRequestError", HTTPStatus.BAD_REQUEST, "lora_name")
            lora = self._next_lora_request(name, path)
            try:
                await self.engine.add_lora(lora)
            except ValueError as e:
                message = f"Failed to load LoRA adapter '{name}' from {path}: {e}"
                return _error(message, "BadRequestError", HTTPStatus.BAD_REQUEST, "lora_path")
            self.lora_requests[name] = lora
            self.lora_parents[name] = self.served_model_name
        return f"Success: LoRA adapter '{name}' loaded."

    async def unload_lora_adapter(self, request: UnloadLoRAAdapterRequest) -> str | ErrorResponse:
        """POST /v1/unload_lora_adapter: 404 for an unknown name, 409 while requests use it."""
        name = request.lora_name
        async with self._lora_lock:
            lora = self.lora_requests.get(name)
            if lora is None:
                message = f"The LoRA adapter '{name}' cannot be found."
                return _error(message, "NotFoundError", HTTPStatus.NOT_FOUND, "lora_name")
            # Stop handing the name out first: a request arriving while the core removes the
            # adapter gets a 404 rather than re-registering what is being removed.
            del self.lora_requests[name]
            parent = self.lora_parents.pop(name)
            try:
                await self.engine.remove_lora(lora.lora_int_id)
            except LoRAInUseError as e:
                self.lora_requests[name], self.lora_parents[name] = lora, parent
                message = f"The LoRA adapter '{name}' cannot be unloaded now: {e}"
                return _error(message, "ConflictError", HTTPStatus.CONFLICT, "lora_name")
        return f"Success: LoRA adapter '{name}' unloaded."
