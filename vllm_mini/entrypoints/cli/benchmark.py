"""`vllm-mini bench serve|throughput|latency`: the benchmark subcommands.

Stage 12. Mirrors vllm/entrypoints/cli/benchmark/ (`vllm bench serve`, `vllm bench throughput`,
`vllm bench latency`). `serve` is the online load generator in vllm_mini/benchmarks/serve.py,
pointed at a running `vllm-mini serve`. `throughput` and `latency` run the offline scripts in the
repository's benchmarks/ folder unchanged, passing every argument through, so there is one copy of
each benchmark. main.py finds this module and calls `register`. Read next: benchmarks/serve.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import runpy
import sys
from datetime import datetime
from pathlib import Path

import vllm_mini

# The offline scripts sit next to the package in a source checkout; a wheel does not ship them.
_SCRIPTS_DIR = Path(vllm_mini.__file__).resolve().parent.parent / "benchmarks"


def register(subparsers: argparse._SubParsersAction) -> None:
    bench = subparsers.add_parser("bench", help="benchmark a server or the engine")
    kinds = bench.add_subparsers(dest="bench_command", required=True)

    serve = kinds.add_parser(
        "serve",
        help="load a running `vllm-mini serve` and report TTFT, TPOT, ITL, throughput",
        description="Send seeded random token-id prompts to an OpenAI-compatible server with "
        "Poisson arrivals; stream every reply and report latency percentiles.",
    )
    add_serve_args(serve)
    serve.set_defaults(func=cmd_bench_serve)

    for name, what in (("throughput", "offline throughput"), ("latency", "batch-1 latency")):
        # No option of our own: prefix_chars that no argument uses makes argparse hand every
        # argument, `--help` included, to the script, which parses and documents its own.
        script = kinds.add_parser(
            name,
            help=f"{what}: runs benchmarks/{name}.py with these arguments",
            add_help=False,
            prefix_chars="\0",
        )
        script.add_argument("script_args", nargs=argparse.REMAINDER)
        script.set_defaults(func=_script_command(name))


def add_serve_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base-url", default="http://127.0.0.1:8000", help="server root URL")
    parser.add_argument("--model", default=None, help="model name (default: first of /v1/models)")
    parser.add_argument("--api-key", default=None, help="sent as 'Authorization: Bearer KEY'")
    parser.add_argument("--num-prompts", type=int, default=32)
    parser.add_argument(
        "--request-rate", type=float, default=float("inf"), help="requests/s; inf: all at once"
    )
    parser.add_argument(
        "--max-concurrency", type=int, default=None, help="cap on requests in flight"
    )
    parser.add_argument("--seed", type=int, default=0, help="fixes prompts and arrival times")
    parser.add_argument("--random-input-len", type=int, default=128)
    parser.add_argument("--random-output-len", type=int, default=64)
    parser.add_argument(
        "--random-range-ratio", type=float, default=0.0, help="lengths vary in len * (1 -/+ r)"
    )
    parser.add_argument("--result-file", default=None, help="also write the metrics as JSON")
    parser.add_argument("--disable-tqdm", action="store_true", help="no progress bar")


def cmd_bench_serve(args: argparse.Namespace) -> None:
    asyncio.run(run_bench_serve(args))


async def run_bench_serve(args: argparse.Namespace) -> dict:
    """Resolve the model and vocabulary, build the workload, run it, print and save the report."""
    from vllm_mini.benchmarks.datasets import probe_vocab_size, sample_random_requests
    from vllm_mini.benchmarks.serve import benchmark, format_report, make_client

    base_url = args.base_url.rstrip("/")
    async with make_client(base_url, args.api_key, 1) as client:
        model = args.model
        if model is None:
            resp = await client.get(f"{base_url}/v1/models")
            resp.raise_for_status()
            model = resp.json()["data"][0]["id"]
        vocab_size = await probe_vocab_size(client, base_url, model)
    requests = sample_random_requests(
        args.num_prompts,
        args.random_input_len,
        args.random_output_len,
        vocab_size,
        args.seed,
        args.random_range_ratio,
    )
    print(
        f"model {model!r} (vocab {vocab_size}): {len(requests)} prompts, rate {args.request_rate}"
    )
    result = await benchmark(
        base_url,
        model,
        requests,
        args.request_rate,
        args.max_concurrency,
        args.seed,
        api_key=args.api_key,
        show_progress=not args.disable_tqdm,
    )
    print(format_report(result.metrics, args.request_rate, args.max_concurrency))
    for error in sorted({o.error for o in result.outputs if not o.success})[:5]:
        print(f"failed request: {error}")
    record = {
        "date": datetime.now().isoformat(timespec="seconds"),
        "base_url": base_url,
        "model": model,
        "vocab_size": vocab_size,
        **{k: getattr(args, k) for k in _RECORDED_ARGS},
        **result.metrics.to_json_dict(),
        "input_lens": [o.prompt_len for o in result.outputs],
        "output_lens": [o.output_tokens for o in result.outputs],
        "ttfts": [o.ttft for o in result.outputs],
        "itls": [o.itl for o in result.outputs],
        "e2els": [o.latency for o in result.outputs],
        "errors": [o.error for o in result.outputs],
    }
    if args.result_file:
        with open(args.result_file, "w") as f:
            json.dump(record, f, indent=2)  # an infinite request rate is written as Infinity
    return record


_RECORDED_ARGS = (
    "num_prompts",
    "request_rate",
    "max_concurrency",
    "seed",
    "random_input_len",
    "random_output_len",
    "random_range_ratio",
)


def _script_command(name: str):
    def run(args: argparse.Namespace) -> None:
        run_script(name, args.script_args)

    return run


def run_script(name: str, script_args: list[str]) -> None:
    """Run benchmarks/<name>.py as if from its own command line, then restore sys.argv/path."""
    path = _SCRIPTS_DIR / f"{name}.py"
    if not path.is_file():
        raise SystemExit(
            f"vllm-mini bench {name}: {path} not found. The offline benchmarks live in the "
            "repository's benchmarks/ folder, which an installed wheel does not include: run "
            "from a source checkout (pip install -e .)."
        )
    saved_argv, saved_path = sys.argv, list(sys.path)
    sys.argv = [f"vllm-mini bench {name}", *script_args]  # argparse names itself after argv[0]
    try:
        runpy.run_path(str(path), run_name="__main__")
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
