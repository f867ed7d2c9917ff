"""Helpers for the server tests: a real uvicorn server on a free port, in a background thread.

Tests that need their own server (an API key, a dying engine, SmolLM2) start one with
`serve(...)`. Every test that sends work checks afterwards that the engine is idle with no KV
block held (`wait_idle`).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
from prometheus_client.parser import text_string_to_metric_families

from vllm_mini.engine.arg_utils import EngineArgs
from vllm_mini.engine.async_llm import AsyncLLM

MAX_MODEL_LEN = 256
SERVED_NAME = "tiny"


@dataclass
class Server:
    url: str
    engine: AsyncLLM

    def client(self, api_key: str = "EMPTY") -> openai.OpenAI:
        # No retries: a retried request would hide the first failure.
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0)

    def async_client(self, api_key: str = "EMPTY") -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0)

    def post(self, path: str, **kwargs) -> httpx.Response:
        return httpx.post(f"{self.url}{path}", timeout=60, **kwargs)


def tiny_engine(model_dir: Path) -> AsyncLLM:
    return AsyncLLM.from_engine_args(
        EngineArgs(
            model=str(model_dir),
            max_model_len=MAX_MODEL_LEN,
            kv_cache_memory_bytes=1 << 22,  # 512 blocks of 16 tokens: ample, and cheap
            disable_log_stats=True,
        )
    )


@contextmanager
def serve(engine: AsyncLLM, **app_kwargs) -> Iterator[Server]:
    import uvicorn

    from vllm_mini.entrypoints.openai.api_server import build_app

    app = build_app(engine, **app_kwargs)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # the port is ours from bind to serve: no race with others
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    deadline = time.monotonic() + 60
    while True:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    try:
        yield Server(url, engine)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def wait_idle(engine: AsyncLLM, timeout: float = 10.0) -> dict[str, float]:
    """Poll until no request runs or waits and no KV block is held; aborts land between steps."""
    deadline = time.monotonic() + timeout
    while True:
        stats = engine.get_stats()
        idle = stats["num_running_reqs"] == 0 and stats["num_waiting_reqs"] == 0
        if idle and stats["kv_cache_usage"] == 0.0:
            return stats
        assert time.monotonic() < deadline, f"engine not idle: {stats}"
        time.sleep(0.02)


def scrape(url: str) -> dict[str, float]:
    """Every sample of /metrics as {"name{label=value,...}": value}."""
    text = httpx.get(f"{url}/metrics").text
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            samples[f"{s.name}{{{labels}}}"] = s.value
    return samples
