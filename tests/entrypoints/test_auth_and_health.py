"""API keys guard /v1/* (health and metrics stay open); a dead engine turns /health to 503."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.entrypoints.server_utils import SERVED_NAME, serve, tiny_engine, wait_idle

KEY = "sk-test-123"


@pytest.fixture(scope="module")
def keyed_server(tiny_llama_dir):
    with serve(tiny_engine(tiny_llama_dir), served_model_name=SERVED_NAME, api_key=KEY) as s:
        yield s


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}])
@pytest.mark.parametrize("path", ["/v1/models", "/v1/completions", "/v1/chat/completions"])
def test_missing_or_wrong_key_is_401_in_openai_shape(keyed_server, path, headers):
    # Even a malformed body: the key is checked first, and says nothing about the body.
    if path == "/v1/models":
        resp = httpx.get(f"{keyed_server.url}{path}", headers=headers)
    else:
        resp = keyed_server.post(path, content=b"{not json", headers=headers)
    assert resp.status_code == 401
    error = resp.json()["error"]
    assert error["type"] == "AuthenticationError" and error["code"] == 401
    assert "API key" in error["message"]


def test_the_right_key_is_accepted_by_the_openai_client(keyed_server):
    with pytest.raises(openai.AuthenticationError):
        keyed_server.client(api_key="wrong").models.list()
    client = keyed_server.client(api_key=KEY)
    assert [m.id for m in client.models.list().data] == [SERVED_NAME]
    resp = client.completions.create(model=SERVED_NAME, prompt="w5", max_tokens=2)
    assert resp.usage.completion_tokens == 2
    wait_idle(keyed_server.engine)


def test_health_and_metrics_need_no_key(keyed_server):
    assert httpx.get(f"{keyed_server.url}/health").status_code == 200
    assert "vllm:num_requests_running" in httpx.get(f"{keyed_server.url}/metrics").text


def test_engine_loop_crash_gives_500_then_unhealthy(tiny_llama_dir):
    engine = tiny_engine(tiny_llama_dir)

    def broken_step():
        raise RuntimeError("simulated device failure")

    engine.engine.engine_core.step = broken_step
    with serve(engine) as s:
        resp = s.post("/v1/completions", json={"prompt": "w5 w6", "max_tokens": 3})
        assert resp.status_code == 500
        error = resp.json()["error"]
        assert (
            error["type"] == "InternalServerError"
            and "simulated device failure" in error["message"]
        )
        assert httpx.get(f"{s.url}/health").status_code == 503
        # Later requests fail fast instead of hanging on a loop that is gone.
        again = s.post("/v1/completions", json={"prompt": "w5 w6", "max_tokens": 3})
        assert again.status_code == 500 and "engine loop died" in again.json()["error"]["message"]
