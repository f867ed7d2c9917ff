"""`vllm-mini serve`: its flags, the MODEL positional, and a real run of the command."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from vllm_mini.entrypoints.cli.main import main as cli_main
from vllm_mini.entrypoints.openai import api_server


def test_serve_help_lists_server_and_engine_flags(capsys):
    with pytest.raises(SystemExit) as exc:
        cli_main(["serve", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for flag in (
        "MODEL",
        "--host",
        "--port",
        "--api-key",
        "--served-model-name",
        "--max-model-len",
    ):
        assert flag in out


@pytest.mark.parametrize(
    ("argv", "model"),
    [(["serve"], None), (["serve", "/ckpt"], "/ckpt"), (["serve", "--model", "/ckpt"], "/ckpt")],
)
def test_model_positional_or_flag_reaches_run_server(monkeypatch, argv, model):
    seen = {}
    monkeypatch.setattr(api_server, "run_server", lambda args: seen.update(vars(args)))
    cli_main([*argv, "--port", "8123", "--api-key", "k"])
    assert seen["model"] == model  # None: EngineArgs resolves it to the bundled SmolLM2
    assert (seen["host"], seen["port"], seen["api_key"]) == ("127.0.0.1", 8123, "k")


def test_model_given_twice_differently_is_refused(monkeypatch):
    monkeypatch.setattr(api_server, "run_server", lambda args: None)
    with pytest.raises(SystemExit, match="given twice"):
        cli_main(["serve", "/a", "--model", "/b"])


def test_serve_command_runs_a_server_until_interrupted(tiny_llama_dir):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "vllm_mini.entrypoints.cli.main", "serve", str(tiny_llama_dir)]
    cmd += ["--port", str(port), "--max-model-len", "128", "--kv-cache-memory-bytes", "1048576"]
    cmd += ["--served-model-name", "cli-tiny", "--disable-log-stats"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "server did not come up"
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        body = {"model": "cli-tiny", "prompt": "w5 w6", "max_tokens": 3, "temperature": 0}
        resp = httpx.post(f"{url}/v1/completions", json=body, timeout=30)
        assert resp.status_code == 200 and resp.json()["usage"]["completion_tokens"] == 3
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C: uvicorn shuts down gracefully
        output, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, output
    assert f"http://127.0.0.1:{port}" in output  # the URL is logged
