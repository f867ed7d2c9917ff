"""The OpenAI-compatible HTTP server: FastAPI routes over one AsyncLLM.

Stage 12. Mirrors vllm/entrypoints/openai/api_server.py. `build_app` wires the serving classes to
routes; each route only converts between HTTP and the serving layer, which holds the logic. The
rules every route shares live here: the OpenAI error shape for every failure (400 for anything a
client can send, never a 500), the API key on /v1/* routes, and aborting a non-streaming request
when its client disconnects (streams abort through their generator being closed).
`run_server` is what `vllm-mini serve` runs. Start reading at `build_app`; next:
serving_completion.py, then the engine it drives, engine/async_llm.py.
LoRA: `--lora-modules` adapters are loaded before the server starts; the routes that load and
unload adapters at run time exist only when VLLM_ALLOW_RUNTIME_LORA_UPDATING is set, as in vLLM
(anyone who can reach them can make the server read any path it can see).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
from collections.abc import AsyncGenerator, Awaitable, Sequence
from http import HTTPStatus
from typing import Any, TypeVar

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from vllm_mini.engine.arg_utils import EngineArgs
from vllm_mini.engine.async_llm import AsyncLLM, EngineDeadError
from vllm_mini.entrypoints.openai.metrics import CONTENT_TYPE, ServerMetrics
from vllm_mini.entrypoints.openai.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    ErrorResponse,
)
from vllm_mini.entrypoints.openai.serve_protocol import (
    DetokenizeRequest,
    LoadLoRAAdapterRequest,
    TokenizeRequest,
    UnloadLoRAAdapterRequest,
)
from vllm_mini.entrypoints.openai.serving_chat import OpenAIServingChat
from vllm_mini.entrypoints.openai.serving_completion import OpenAIServingCompletion
from vllm_mini.entrypoints.openai.serving_engine import create_error_response, internal_error
from vllm_mini.entrypoints.openai.serving_models import (
    LoRAModulePath,
    OpenAIServingModels,
    parse_lora_module,
)
from vllm_mini.entrypoints.openai.serving_tokenization import OpenAIServingTokenization
from vllm_mini.logger import init_logger
from vllm_mini.tool_parsers import ToolParserManager

logger = init_logger(__name__)
T = TypeVar("T")

_UNION_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}
# The `type` of an error body, per HTTP status: the names of the openai client's exceptions.
_ERROR_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    404: "NotFoundError",
    405: "MethodNotAllowedError",
    409: "ConflictError",
    413: "PayloadTooLargeError",
    500: "InternalServerError",
}


def error_json(error: ErrorResponse) -> Response:
    return Response(error.model_dump_json(), error.error.code, media_type="application/json")


class SSEResponse(StreamingResponse):
    """A text/event-stream response that always closes its generator when it ends.

    On a client disconnect Starlette cancels the response; if that happens while the generator
    sits at a `yield` (its chunk being sent), nothing resumes it, and its `finally` — which
    aborts the engine requests — would wait for the garbage collector. Closing it here runs that
    cleanup now; the cleanup never suspends, so it completes even inside the cancelled scope."""

    def __init__(self, content: AsyncGenerator[str, None]) -> None:
        super().__init__(content, media_type="text/event-stream")
        self.generator = content

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.generator.aclose()


def to_response(result: BaseModel | Any) -> Response:
    """Serving results: an ErrorResponse, a pydantic body, or an async generator of SSE events."""
    if isinstance(result, ErrorResponse):
        return error_json(result)
    if isinstance(result, BaseModel):
        # model_dump_json turns a -inf logprob into null; json.dumps would refuse it.
        return Response(result.model_dump_json(), media_type="application/json")
    return SSEResponse(result)


async def until_disconnect(raw_request: Request, work: Awaitable[T]) -> T | None:
    """Run `work`, cancelling it if the client hangs up first (vLLM's `with_cancellation`).

    Cancelling a non-streaming request's task closes its engine streams, which aborts them."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(raw_request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        logger.info("client disconnected; aborting %s", raw_request.url.path)
        return None
    finally:
        task.cancel()
        watcher.cancel()


async def _wait_for_disconnect(raw_request: Request) -> None:
    # The body is already read, so the next ASGI message can only be the disconnect.
    while (await raw_request.receive())["type"] != "http.disconnect":
        pass


class APIKeyMiddleware:
    """401 unless `Authorization: Bearer <key>`, for /v1/* only (health and metrics stay open).

    A raw ASGI middleware, so the key is checked before the body is even parsed."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1"):
            given = Headers(scope=scope).get("authorization", "").encode()
            if not secrets.compare_digest(given, self.expected):  # constant time
                error = create_error_response(
                    "missing or invalid API key: send the header 'Authorization: Bearer <key>'",
                    "AuthenticationError",
                    HTTPStatus.UNAUTHORIZED,
                )
                await error_json(error)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def describe_validation_errors(errors: Sequence[Any]) -> tuple[str, str | None]:
    """pydantic's error list -> one message naming each bad field, and the first field."""
    by_field: dict[str, list[str]] = {}
    for err in errors:
        if err.get("type") == "json_invalid":
            return f"the body is not valid JSON: {err.get('ctx', {}).get('error', '')}", None
        # Drop "body" and the union-branch tags pydantic inserts ("str", "list[str]", ...).
        loc = [str(x) for x in err.get("loc", ()) if x != "body" and str(x) not in _UNION_TAGS]
        loc = [x for x in loc if "[" not in x]
        msg = str(err.get("msg", "")).removeprefix("Value error, ")
        if not loc and err.get("type") in ("model_attributes_type", "dict_type"):
            msg = "the body must be a JSON object"
        by_field.setdefault(".".join(loc), []).append(msg)
    parts = [f"{f}: {' or '.join(msgs)}" if f else "; ".join(msgs) for f, msgs in by_field.items()]
    param = next((f for f in by_field if f), None)
    return "; ".join(parts), param


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> Response:
        # FastAPI answers 422 in its own shape; OpenAI clients expect 400 and `error`.
        message, param = describe_validation_errors(exc.errors())
        return error_json(create_error_response(message, param=param))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> Response:
        err_type = _ERROR_TYPES.get(exc.status_code, "APIError")
        message, param = str(exc.detail), None
        if isinstance(exc.__cause__, UnicodeDecodeError):  # FastAPI's generic parse failure
            message, param = f"the body is not valid UTF-8 JSON: {exc.__cause__}", "body"
        return error_json(create_error_response(message, err_type, exc.status_code, param))

    @app.exception_handler(Exception)
    async def internal(_: Request, exc: Exception) -> Response:
        logger.exception("internal error while serving a request", exc_info=exc)
        return error_json(internal_error(exc))


RUNTIME_LORA_ENV = "VLLM_ALLOW_RUNTIME_LORA_UPDATING"


def runtime_lora_updating_allowed() -> bool:
    """vLLM's switch for /v1/load_lora_adapter and /v1/unload_lora_adapter: "1" or "true"."""
    return os.environ.get(RUNTIME_LORA_ENV, "0").strip().lower() in ("1", "true")


def build_app(
    engine: AsyncLLM,
    *,
    served_model_name: str | None = None,
    api_key: str | None = None,
    lora_modules: Sequence[LoRAModulePath] = (),
    allow_runtime_lora_updating: bool | None = None,
    enable_auto_tool_choice: bool = False,
    tool_call_parser: str | None = None,
) -> FastAPI:
    """The app over a fresh engine. `lora_modules` are loaded now (a bad one raises ValueError
    naming it); `allow_runtime_lora_updating` (default: the VLLM_ALLOW_RUNTIME_LORA_UPDATING
    environment variable) adds the routes that load and unload adapters while serving."""
    model_config = engine.model_config
    name = served_model_name or model_config.served_model_name or model_config.model
    models = OpenAIServingModels(name, model_config.model, model_config.max_model_len, engine)
    models.load_static_loras(list(lora_modules))
    if allow_runtime_lora_updating is None:
        allow_runtime_lora_updating = runtime_lora_updating_allowed()
    metrics = ServerMetrics(engine, name)
    completion = OpenAIServingCompletion(engine, models, metrics)
    chat = OpenAIServingChat(
        engine,
        models,
        metrics,
        enable_auto_tools=enable_auto_tool_choice,
        tool_parser=tool_call_parser,
    )
    tokenization = OpenAIServingTokenization(engine, models)

    app = FastAPI(title="vllm_mini OpenAI-compatible server")
    app.state.engine = engine
    app.state.metrics = metrics
    _install_error_handlers(app)
    if api_key:
        app.add_middleware(APIKeyMiddleware, api_key=api_key)

    @app.get("/health")
    async def health() -> Response:
        try:
            await engine.check_health()
        except EngineDeadError:
            return Response(status_code=HTTPStatus.SERVICE_UNAVAILABLE)
        return Response(status_code=HTTPStatus.OK)

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        return Response(await metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/models")
    async def show_available_models() -> Response:
        return to_response(models.show_available_models())

    @app.post("/v1/completions")
    async def create_completion(request: CompletionRequest, raw_request: Request) -> Response:
        result = await until_disconnect(raw_request, completion.create_completion(request))
        return to_response(result) if result is not None else Response(status_code=499)

    @app.post("/v1/chat/completions")
    async def create_chat_completion(
        request: ChatCompletionRequest, raw_request: Request
    ) -> Response:
        result = await until_disconnect(raw_request, chat.create_chat_completion(request))
        return to_response(result) if result is not None else Response(status_code=499)

    if allow_runtime_lora_updating:
        logger.warning(
            "runtime LoRA updating is on: /v1/load_lora_adapter reads any adapter path the "
            "server can see; do not expose it to untrusted clients"
        )

        @app.post("/v1/load_lora_adapter")
        async def load_lora_adapter(request: LoadLoRAAdapterRequest) -> Response:
            result = await models.load_lora_adapter(request)
            return (
                error_json(result)
                if isinstance(result, ErrorResponse)
                else PlainTextResponse(result)
            )

        @app.post("/v1/unload_lora_adapter")
        async def unload_lora_adapter(request: UnloadLoRAAdapterRequest) -> Response:
            result = await models.unload_lora_adapter(request)
            return (
                error_json(result)
                if isinstance(result, ErrorResponse)
                else PlainTextResponse(result)
            )

    @app.post("/tokenize")
    async def tokenize(request: TokenizeRequest) -> Response:
        return to_response(await tokenization.create_tokenize(request))

    @app.post("/detokenize")
    async def detokenize(request: DetokenizeRequest) -> Response:
        return to_response(await tokenization.create_detokenize(request))

    return app


def make_arg_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Server flags, then every engine flag (EngineArgs), including --served-model-name."""
    group = parser.add_argument_group("server arguments")
    group.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    group.add_argument("--port", type=int, default=8000, help="port to listen on (default: 8000)")
    group.add_argument(
        "--api-key", default=None, help="if set, /v1/* requests need 'Authorization: Bearer KEY'"
    )
    group.add_argument(
        "--uvicorn-log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug", "trace"],
        help="uvicorn's log level (default: info)",
    )
    group.add_argument(
        "--lora-modules",
        nargs="+",
        default=[],
        type=_lora_module_arg,
        metavar="NAME=PATH",
        help="LoRA adapters to serve (needs --enable-lora), each as name=path or as JSON "
        '\'{"name": "sql-lora", "path": "/adapters/sql", "base_model_name": "..."}\'; '
        "clients pick one with model=NAME. Put MODEL before this flag.",
    )
    group.add_argument(
        "--enable-auto-tool-choice",
        action="store_true",
        help='let the model decide when to call tools (tool_choice "auto"); needs '
        "--tool-call-parser",
    )
    group.add_argument(
        "--tool-call-parser",
        default=None,
        choices=sorted(ToolParserManager.tool_parsers),
        help="the format the model writes tool calls in (hermes: <tool_call>{json}</tool_call>)",
    )
    EngineArgs.add_cli_args(parser)
    return parser


def _lora_module_arg(text: str) -> LoRAModulePath:
    try:
        return parse_lora_module(text)
    except ValueError as e:  # argparse prints it as "argument --lora-modules: ..."
        raise argparse.ArgumentTypeError(str(e)) from e


def run_server(args: argparse.Namespace) -> None:
    """Build the engine, then serve until Ctrl-C (blocking)."""
    engine_args = EngineArgs.from_cli_args(args)
    engine = AsyncLLM.from_engine_args(engine_args)
    try:
        app = build_app(
            engine,
            served_model_name=engine_args.served_model_name,
            api_key=args.api_key,
            lora_modules=getattr(args, "lora_modules", None) or (),
            enable_auto_tool_choice=getattr(args, "enable_auto_tool_choice", False),
            tool_call_parser=getattr(args, "tool_call_parser", None),
        )
    except ValueError as e:  # a bad --lora-modules adapter: stop before listening
        engine.shutdown()
        raise SystemExit(f"vllm-mini serve: {e}") from e
    name = engine.model_config.served_model_name
    url = f"http://{args.host}:{args.port}"
    logger.info("serving model %r at %s (OpenAI API under %s/v1)", name, url, url)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.uvicorn_log_level)
    finally:
        engine.shutdown()
