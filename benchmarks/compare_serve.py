"""Serving side by side: `vllm-mini serve` and vLLM's API server, both driven by vLLM's client.

Benchmark tooling (no stage). vLLM's own serving benchmark (the module `vllm.benchmarks.serve`,
run with the vLLM peer venv's python: the wheel's `vllm` command fails on its own version lookup)
drives each server in turn with the same random dataset: 32 prompts of 128 random tokens, 64
output tokens each (ignore_eos), Poisson arrivals at 4 req/s, seed 0. Both servers run the same
weights in fp32 (ours from the GGUF with --dtype float32, vLLM's from the HF safetensors copy).
The client shares the two cores with the server, alike for both. Without the vLLM venv there is
no client: the section says so. Called by compare.py --serve, or on its own:

`--rounds N` alternates the servers N times (each started fresh) and shows each metric's
median, the spread across rounds in brackets: one round of 32 requests on 2 shared cores moves
by tens of percent in TPOT when the server runs near its capacity.

    python benchmarks/compare_serve.py [--threads 1] [--rounds 3]
"""

from __future__ import annotations

import json
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import ensure_hf_dir, has_peer, peer_env, venv_python  # noqa: E402

# vllm.benchmarks.serve exposes add_cli_args + main, as vLLM's `vllm bench serve` calls them.
CLIENT = (
    "import sys\n"
    "from vllm.benchmarks.serve import add_cli_args, main\n"
    "from vllm.utils.argparse_utils import FlexibleArgumentParser\n"
    "parser = FlexibleArgumentParser()\n"
    "add_cli_args(parser)\n"
    "main(parser.parse_args(sys.argv[1:]))\n"
)
WORKLOAD = {"input": 128, "output": 64, "prompts": 32, "rate": 4.0}
METRICS = [
    ("output tok/s", "output_throughput", True),
    ("mean TTFT ms", "mean_ttft_ms", False),
    ("mean TPOT ms", "mean_tpot_ms", False),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def client_argv(base_url: str, tokenizer: str, result_dir: str, name: str) -> list[str]:
    w = WORKLOAD
    return [
        "-c", CLIENT, "--backend", "openai", "--endpoint", "/v1/completions",
        "--base-url", base_url, "--tokenizer", tokenizer, "--dataset-name", "random",
        "--random-input-len", str(w["input"]), "--random-output-len", str(w["output"]),
        "--num-prompts", str(w["prompts"]), "--request-rate", str(w["rate"]), "--ignore-eos",
        "--seed", "0", "--disable-tqdm", "--save-result", "--result-dir", result_dir,
        "--result-filename", f"{name}.json",
    ]  # fmt: skip


def server_commands(port: int, hf_dir: str, threads: int = 0) -> dict[str, tuple[list, dict]]:
    """How to start each server: argv and environment."""
    mini = Path(sys.executable).with_name("vllm-mini")
    ours = [str(mini), "serve", "--dtype", "float32", "--port", str(port), "--disable-log-stats"]
    theirs = [
        str(venv_python("vllm")),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        hf_dir,
        "--dtype",
        "float32",
        "--max-model-len",
        "2048",
        "--port",
        str(port),
    ]
    return {
        "vllm_mini": (ours, peer_env(None, threads)),
        "vLLM 0.32 CPU": (theirs, peer_env("vllm", threads)),
    }


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 900) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
                if r.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(2)
    return False


def bench_server(name: str, argv: list[str], env: dict, hf_dir: str, out: Path) -> dict | str:
    """Start one server, run vLLM's client against it, stop it. A dict of metrics, or why not."""
    port = int(argv[argv.index("--port") + 1])
    url = f"http://127.0.0.1:{port}"
    log = open(out / f"{name.split()[0]}-server.log", "w")
    server = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        if not wait_healthy(url, server):
            return f"server did not start (log: {log.name})"
        tag = name.split()[0].replace(".", "")
        client = subprocess.run(
            [str(venv_python("vllm")), *client_argv(url, hf_dir, str(out), tag)],
            capture_output=True, text=True, env=peer_env("vllm"), timeout=1800,
        )  # fmt: skip
        result = out / f"{tag}.json"
        if client.returncode != 0 or not result.exists():
            print(client.stdout[-2000:], client.stderr[-2000:], sep="\n")
            return "client failed"
        return json.loads(result.read_text())
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def median_of_rounds(runs: list[dict | str]) -> dict | str:
    """One server's rounds -> the median of each metric (the rounds' values kept under
    "<key>_rounds"); the first failure's reason if no round gave figures."""
    good = [r for r in runs if isinstance(r, dict)]
    if not good:
        return runs[0]
    merged: dict = {"completed": min(r.get("completed", 0) for r in good)}
    for _, key, _ in METRICS:
        values = [r[key] for r in good]
        merged[key], merged[f"{key}_rounds"] = statistics.median(values), values
    return merged


def render_serve_table(results: dict[str, dict | str]) -> str:
    """Rows per server; peer cells carry vllm_mini's advantage (> 1: we do better)."""
    names = list(results)
    ref = results[names[0]]
    head = "| server | " + " | ".join(m[0] for m in METRICS) + " | completed |"
    lines = [head, "|---" * (len(METRICS) + 2) + "|"]
    for name in names:
        r = results[name]
        if isinstance(r, str):
            lines.append(f"| {name} | " + " | ".join([r] * len(METRICS)) + " | — |")
            continue
        cells = []
        for _, key, higher_better in METRICS:
            text = f"{r[key]:.1f}"
            if len(rounds := r.get(f"{key}_rounds", [])) > 1:
                text += f" [{min(rounds):.0f}-{max(rounds):.0f}]"
            if r is not ref and isinstance(ref, dict) and r[key] and ref[key]:
                ratio = ref[key] / r[key] if higher_better else r[key] / ref[key]
                text += f" ({ratio:.2f}×)"
            cells.append(text)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {r.get('completed', '?')} |")
    return "\n".join(lines)


def serve_comparison(hf_dir: str, threads: int = 0, rounds: int = 1) -> str:
    w = WORKLOAD
    title = "### Serving: `vllm-mini serve` vs vLLM's api_server, vLLM's `vllm.benchmarks.serve`\n"
    desc = (
        f"random dataset, {w['prompts']} prompts of {w['input']} tokens, {w['output']} output "
        f"tokens (ignore_eos), {w['rate']:g} req/s Poisson, seed 0, fp32; ratio in brackets: "
        "vllm_mini's advantage (its tok/s ÷ theirs, their ms ÷ ours; > 1: vllm_mini better); "
        f"{threads or 'all'} thread(s) per server"
        + (f"; median of {rounds} alternating rounds [range]." if rounds > 1 else ".")
    )
    if not has_peer("vllm"):
        return f"{title}\n{desc}\n\nvLLM peer venv absent: no client, no figures.\n"
    out = Path(tempfile.mkdtemp(prefix="vllm_mini_serve_"))
    runs: dict[str, list[dict | str]] = {}
    for i in range(rounds):
        for name, (argv, env) in server_commands(free_port(), hf_dir, threads).items():
            print(f"serving benchmark: {name}, round {i + 1} of {rounds} ...", flush=True)
            runs.setdefault(name, []).append(bench_server(name, argv, env, hf_dir, out))
    results = {name: median_of_rounds(r) for name, r in runs.items()}
    return f"{title}\n{desc}\n\n{render_serve_table(results)}\n"


if __name__ == "__main__":
    threads = int(sys.argv[sys.argv.index("--threads") + 1]) if "--threads" in sys.argv else 0
    rounds = int(sys.argv[sys.argv.index("--rounds") + 1]) if "--rounds" in sys.argv else 1
    print(serve_comparison(str(ensure_hf_dir()), threads, rounds))
