"""`vllm-mini bench serve`: metrics against numpy, Poisson arrivals, and a run against the real
server (uvicorn + build_app over an AsyncLLM on the tiny model) in a background thread."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import numpy as np
import pytest

from vllm_mini.benchmarks.datasets import probe_vocab_size, sample_random_requests
from vllm_mini.benchmarks.serve import (
    RequestFuncOutput,
    arrival_times,
    benchmark,
    calculate_metrics,
    format_report,
    make_client,
)
from vllm_mini.engine.arg_utils import EngineArgs
from vllm_mini.engine.async_llm import AsyncLLM
from vllm_mini.entrypoints.cli import benchmark as bench_cli
from vllm_mini.entrypoints.cli.main import main as cli_main


def _records() -> list[RequestFuncOutput]:
    return [
        RequestFuncOutput(True, 10, 4, ttft=0.10, itl=[0.02, 0.03, 0.05], latency=0.20),
        RequestFuncOutput(True, 20, 3, ttft=0.30, itl=[0.04, 0.01], latency=0.36),
        RequestFuncOutput(True, 5, 1, ttft=0.07, itl=[], latency=0.07),  # no decode phase
        RequestFuncOutput(False, 99, 0, error="HTTP 400: bad"),  # must not count anywhere
    ]


def test_metrics_match_numpy_and_throughput_arithmetic():
    m = calculate_metrics(_records(), duration=2.0)
    assert (m.completed, m.failed, m.total_input, m.total_output) == (3, 1, 35, 8)
    assert m.request_throughput == pytest.approx(1.5)
    assert m.output_throughput == pytest.approx(4.0)
    assert m.total_token_throughput == pytest.approx(21.5)

    ttft = np.array([0.10, 0.30, 0.07]) * 1000
    tpot = np.array([(0.20 - 0.10) / 3, (0.36 - 0.30) / 2]) * 1000  # single-token one excluded
    itl = np.array([0.02, 0.03, 0.05, 0.04, 0.01]) * 1000  # pooled over requests
    e2el = np.array([0.20, 0.36, 0.07]) * 1000
    for stats, ref in ((m.ttft, ttft), (m.tpot, tpot), (m.itl, itl), (m.e2el, e2el)):
        assert stats.mean_ms == pytest.approx(ref.mean())
        assert stats.median_ms == pytest.approx(np.median(ref))
        assert stats.p99_ms == pytest.approx(np.percentile(ref, 99))
        assert stats.std_ms == pytest.approx(ref.std())

    flat = m.to_json_dict()
    assert flat["p99_itl_ms"] == pytest.approx(np.percentile(itl, 99))
    assert flat["completed"] == 3
    report = format_report(m, request_rate=4.0, max_concurrency=None)
    rows = {line[:40].strip(): line[40:].strip() for line in report.splitlines()}
    assert rows["Successful requests:"] == "3" and rows["Failed requests:"] == "1"
    assert rows["Output token throughput (tok/s):"] == "4.00"
    assert rows["Median TPOT (ms):"] == f"{np.median(tpot):.2f}"


def test_all_failed_requests_give_zero_latencies_not_nan():
    m = calculate_metrics([RequestFuncOutput(error="refused")], duration=1.0)
    assert (m.completed, m.failed, m.total_output) == (0, 1, 0)
    assert m.ttft.p99_ms == 0.0 and m.e2el.mean_ms == 0.0


def test_poisson_arrivals_are_seeded_with_mean_gap_one_over_rate():
    rate = 4.0
    times = arrival_times(20_000, rate, seed=7)
    assert times == arrival_times(20_000, rate, seed=7)
    assert times != arrival_times(20_000, rate, seed=8)
    gaps = np.diff(times)
    assert times[0] == 0.0 and (gaps >= 0).all()
    # Standard error of the mean gap is 0.25 / sqrt(20000) ~ 0.0018: 5% is a generous bound.
    assert gaps.mean() == pytest.approx(1 / rate, rel=0.05)
    # Exponential gaps have std == mean (coefficient of variation 1); evenly spaced ones have 0.
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, rel=0.05)
    assert arrival_times(5, float("inf"), seed=0) == [0.0] * 5
    with pytest.raises(ValueError, match="request_rate"):
        arrival_times(5, 0.0, seed=0)


def test_random_requests_are_seeded_and_within_vocab_and_lengths():
    reqs = sample_random_requests(50, 20, 10, vocab_size=384, seed=3, range_ratio=0.5)
    assert reqs == sample_random_requests(50, 20, 10, vocab_size=384, seed=3, range_ratio=0.5)
    assert reqs != sample_random_requests(50, 20, 10, vocab_size=384, seed=4, range_ratio=0.5)
    assert all(10 <= r.prompt_len <= 30 and 5 <= r.expected_output_len <= 15 for r in reqs)
    assert all(0 <= t < 384 for r in reqs for t in r.prompt_token_ids)
    assert len({r.prompt_len for r in reqs}) > 1
    fixed = sample_random_requests(4, 16, 8, vocab_size=384, seed=0)
    assert all(r.prompt_len == 16 and r.expected_output_len == 8 for r in fixed)


@pytest.fixture(scope="module")
def live_server(tiny_llama_dir):
    import uvicorn

    from vllm_mini.entrypoints.openai.api_server import build_app

    engine = AsyncLLM.from_engine_args(
        EngineArgs(model=str(tiny_llama_dir), kv_cache_memory_bytes=1 << 22, disable_log_stats=True)
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # a free port, held from bind to serve: no race
    server = uvicorn.Server(
        uvicorn.Config(build_app(engine, served_model_name="tiny"), log_level="warning")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}", engine
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


def _wait_idle(engine: AsyncLLM) -> dict:
    for _ in range(200):
        if not engine.engine.has_unfinished_requests():
            break
        time.sleep(0.01)
    return engine.get_stats()


def test_benchmark_against_real_server(live_server):
    url, engine = live_server

    async def probe() -> int:
        async with make_client(url, None, 1) as client:
            return await probe_vocab_size(client, url, "tiny")

    vocab = asyncio.run(probe())
    assert vocab == engine.model_config.vocab_size
    reqs = sample_random_requests(8, 12, 6, vocab, seed=0, range_ratio=0.5)
    result = asyncio.run(benchmark(url, "tiny", reqs, 50.0, max_concurrency=4, seed=0))

    assert [o.error for o in result.outputs] == [""] * 8
    for req, out in zip(reqs, result.outputs):
        assert out.output_tokens == req.expected_output_len  # ignore_eos: exactly as requested
        assert out.prompt_len == req.prompt_len
        assert 0 < out.ttft <= out.latency
        assert len(out.itl) <= out.output_tokens - 1
    m = result.metrics
    assert m.completed == 8 and m.total_output == sum(r.expected_output_len for r in reqs)
    assert m.ttft.mean_ms <= m.e2el.mean_ms
    stats = _wait_idle(engine)
    assert stats["kv_cache_usage"] == 0.0 and stats["num_running_reqs"] == 0


def test_cli_bench_serve_writes_result_file(live_server, tmp_path, capsys):
    url, engine = live_server
    out = tmp_path / "result.json"
    argv = ["bench", "serve", "--base-url", url, "--num-prompts", "4", "--request-rate", "inf"]
    argv += ["--random-input-len", "8", "--random-output-len", "5", "--disable-tqdm"]
    cli_main([*argv, "--result-file", str(out)])
    record = json.loads(out.read_text())
    assert record["model"] == "tiny"  # the first (only) entry of /v1/models
    assert record["completed"] == 4 and record["total_output"] == 20
    assert record["output_lens"] == [5, 5, 5, 5]
    assert record["request_throughput"] == pytest.approx(4 / record["duration"])
    assert "Serving Benchmark Result" in capsys.readouterr().out
    assert _wait_idle(engine)["kv_cache_usage"] == 0.0


@pytest.mark.parametrize("kind", ["serve", "throughput"])
def test_cli_help_exits_zero(kind, capsys):
    with pytest.raises(SystemExit) as exc:
        cli_main(["bench", kind, "--help"])
    assert exc.value.code == 0
    # throughput's help comes from benchmarks/throughput.py itself: the arguments pass through.
    expected = "--request-rate" if kind == "serve" else "--num-requests"
    assert expected in capsys.readouterr().out


def test_bench_throughput_without_the_script_says_why(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_cli, "_SCRIPTS_DIR", tmp_path)
    with pytest.raises(SystemExit, match="not found.*source checkout"):
        cli_main(["bench", "throughput", "--num-requests", "2"])
