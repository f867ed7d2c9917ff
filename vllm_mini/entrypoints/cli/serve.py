"""`vllm-mini serve [MODEL]`: start the OpenAI-compatible server.

Stage 12. Mirrors vllm/entrypoints/cli/serve.py. As in vLLM, the model may be given as the first
positional argument (`vllm-mini serve ./my-checkpoint`) or with `--model`; without either the
bundled SmolLM2 is served. main.py finds this module and calls `register`. Read next:
vllm_mini/entrypoints/openai/api_server.py.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from vllm_mini.entrypoints.openai.api_server import make_arg_parser

    serve = subparsers.add_parser(
        "serve",
        help="start the OpenAI-compatible server",
        description="Serve a model over the OpenAI API (/v1/completions, /v1/chat/completions, "
        "/v1/models) plus /health, /metrics, /tokenize and /detokenize. With --enable-lora and "
        "--lora-modules NAME=PATH, each adapter is served as the model NAME; with the "
        "environment variable VLLM_ALLOW_RUNTIME_LORA_UPDATING=1, adapters can also be loaded "
        "and unloaded while serving (POST /v1/load_lora_adapter, /v1/unload_lora_adapter).",
        usage="vllm-mini serve [MODEL] [options]",
    )
    serve.add_argument(
        "model_tag",
        nargs="?",
        default=None,
        metavar="MODEL",
        help="checkpoint dir or .gguf file (same as --model; default: SmolLM2-135M-Instruct)",
    )
    make_arg_parser(serve)
    serve.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> None:
    from vllm_mini.entrypoints.openai.api_server import run_server

    if args.model_tag is not None:
        if args.model is not None and args.model != args.model_tag:
            raise SystemExit(
                f"vllm-mini serve: the model is given twice ({args.model_tag!r} and "
                f"--model {args.model!r}); give it once"
            )
        args.model = args.model_tag
    run_server(args)
