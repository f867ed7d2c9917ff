"""`vllm-mini`: generate, chat, serve, bench.

Mirrors vllm/entrypoints/cli/main.py. Every subcommand takes the engine arguments generated from
EngineArgs (`vllm-mini generate --help` lists them).
"""

from __future__ import annotations

import argparse
import sys

from vllm_mini.engine.arg_utils import EngineArgs


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)


def _llm(args: argparse.Namespace):
    from vllm_mini.entrypoints.llm import LLM

    engine_args = EngineArgs.from_cli_args(args)
    kwargs = {k: v for k, v in vars(engine_args).items() if k not in ("model", "dtype", "seed")}
    return LLM(engine_args.model, dtype=engine_args.dtype, seed=engine_args.seed, **kwargs)


def _params(args: argparse.Namespace):
    from vllm_mini.sampling_params import SamplingParams

    return SamplingParams(
        max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k
    )


def cmd_generate(args: argparse.Namespace) -> None:
    llm = _llm(args)
    if args.chat_template_off:
        outputs = llm.generate(args.prompts, _params(args), use_tqdm=False)
    else:
        convs = [[{"role": "user", "content": p}] for p in args.prompts]
        outputs = llm.chat(convs, _params(args), use_tqdm=False)
    for prompt, out in zip(args.prompts, outputs):
        print(f"Prompt: {prompt!r}")
        print(f"Output: {out.outputs[0].text!r}\n")


def cmd_chat(args: argparse.Namespace) -> None:
    llm = _llm(args)
    conversation: list[dict[str, str]] = []
    print("Chatting with the model; an empty line or Ctrl-D quits.")
    for line in sys.stdin if not sys.stdin.isatty() else iter(lambda: input("> "), ""):
        line = line.strip()
        if not line:
            break
        conversation.append({"role": "user", "content": line})
        reply = llm.chat(conversation, _params(args), use_tqdm=False)[0].outputs[0].text
        conversation.append({"role": "assistant", "content": reply})
        print(reply)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="vllm-mini", description="vllm_mini command line")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="generate completions for prompts")
    gen.add_argument("prompts", nargs="+")
    gen.add_argument(
        "--chat-template-off",
        action="store_true",
        help="send prompts raw, without the chat template",
    )
    _add_sampling_args(gen)
    EngineArgs.add_cli_args(gen)
    gen.set_defaults(func=cmd_generate)

    chat = sub.add_parser("chat", help="interactive chat")
    _add_sampling_args(chat)
    EngineArgs.add_cli_args(chat)
    chat.set_defaults(func=cmd_chat)

    for extra in _extra_commands():
        extra(sub)

    args = parser.parse_args(argv)
    args.func(args)


def _extra_commands():
    """Subcommands that live in their own modules (serve, bench) register here when present."""
    registrars = []
    for module_name in ("vllm_mini.entrypoints.cli.serve", "vllm_mini.entrypoints.cli.benchmark"):
        try:
            module = __import__(module_name, fromlist=["register"])
        except ModuleNotFoundError as e:
            if e.name != module_name:
                raise
            continue
        registrars.append(module.register)
    return registrars


if __name__ == "__main__":
    main()
