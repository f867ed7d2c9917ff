"""LoRA adapters over HTTP: `model=<adapter>`, /v1/models, run-time load and unload, errors.

Adapters are made by PEFT on the tiny test model (random A and B, so they change the output).
The server's text for `model=<adapter>` must equal the offline LLM's with the same adapter.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import torch

from tests.entrypoints.server_utils import MAX_MODEL_LEN, Server, serve, tiny_engine, wait_idle
from vllm_mini import LLM, SamplingParams
from vllm_mini.engine.arg_utils import EngineArgs
from vllm_mini.engine.async_llm import AsyncLLM
from vllm_mini.entrypoints.cli.main import main as cli_main
from vllm_mini.entrypoints.openai import api_server
from vllm_mini.entrypoints.openai.api_server import build_app
from vllm_mini.entrypoints.openai.serving_models import LoRAModulePath, parse_lora_module
from vllm_mini.lora.request import LoRARequest

BASE = "tiny"
PROMPT = "w5 w6 w7 w8"
MESSAGES = [{"role": "user", "content": "w5 w6 w7"}]
GREEDY = dict(temperature=0.0, max_tokens=8, extra_body={"ignore_eos": True})
LORA_ENGINE = dict(enable_lora=True, max_loras=2, max_lora_rank=16)


def _make_adapter(base: Path, out: Path, seed: int, **lora_kwargs) -> str:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base),
        LoraConfig(init_lora_weights=False, **lora_kwargs),  # random B too: a visible change
    )
    model.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def adapters(tiny_llama_dir, tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("lora_serving")
    sql = _make_adapter(tiny_llama_dir, root / "sql", 1, r=8, lora_alpha=16,
                        target_modules=["q_proj", "v_proj"])  # fmt: skip
    other = _make_adapter(tiny_llama_dir, root / "other", 2, r=4, lora_alpha=8,
                          target_modules=["o_proj", "down_proj"])  # fmt: skip
    # A copy that claims rank 32: above the server's --max-lora-rank 16.
    too_big = root / "too_big"
    shutil.copytree(other, too_big)
    config = json.loads((too_big / "adapter_config.json").read_text())
    (too_big / "adapter_config.json").write_text(json.dumps({**config, "r": 32}))
    return {"sql": sql, "other": other, "too_big": str(too_big)}


def _lora_engine(model_dir: Path) -> AsyncLLM:
    return AsyncLLM.from_engine_args(
        EngineArgs(
            model=str(model_dir),
            max_model_len=MAX_MODEL_LEN,
            kv_cache_memory_bytes=1 << 22,
            disable_log_stats=True,
            **LORA_ENGINE,
        )
    )


@pytest.fixture(scope="module")
def lora_server(tiny_llama_dir, adapters) -> Iterator[Server]:
    engine = _lora_engine(tiny_llama_dir)
    modules = [LoRAModulePath("sql-lora", adapters["sql"])]
    with serve(
        engine, served_model_name=BASE, lora_modules=modules, allow_runtime_lora_updating=True
    ) as s:
        yield s


@pytest.fixture(scope="module")
def offline(tiny_llama_dir) -> LLM:
    return LLM(
        str(tiny_llama_dir), max_model_len=MAX_MODEL_LEN, kv_cache_memory_bytes=1 << 22,
        **LORA_ENGINE,
    )  # fmt: skip


def _offline_text(llm: LLM, lora: LoRARequest | None, chat: bool = False) -> str:
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    if chat:
        return llm.chat(MESSAGES, params, use_tqdm=False, lora_request=lora)[0].outputs[0].text
    return llm.generate(PROMPT, params, use_tqdm=False, lora_request=lora)[0].outputs[0].text


# ---- model=<adapter> -------------------------------------------------------------------------


def test_adapter_completions_equal_offline_and_differ_from_base(lora_server, offline, adapters):
    client = lora_server.client()
    ref = _offline_text(offline, LoRARequest("sql", 1, adapters["sql"]))
    assert ref != _offline_text(offline, None), "the adapter changes nothing: a vacuous test"

    resp = client.completions.create(model="sql-lora", prompt=PROMPT, **GREEDY)
    assert resp.choices[0].text == ref
    assert resp.model == "sql-lora"  # the response names the adapter, as vLLM's does
    base = client.completions.create(model=BASE, prompt=PROMPT, **GREEDY)
    assert base.choices[0].text == _offline_text(offline, None) and base.model == BASE

    chunks = list(client.completions.create(model="sql-lora", prompt=PROMPT, stream=True, **GREEDY))
    assert "".join(c.choices[0].text for c in chunks) == ref
    assert {c.model for c in chunks} == {"sql-lora"}
    wait_idle(lora_server.engine)


def test_adapter_chat_equals_offline_streamed_or_not(lora_server, offline, adapters):
    client = lora_server.client()
    ref = _offline_text(offline, LoRARequest("sql", 1, adapters["sql"]), chat=True)
    assert ref != _offline_text(offline, None, chat=True)
    resp = client.chat.completions.create(model="sql-lora", messages=MESSAGES, **GREEDY)
    assert resp.choices[0].message.content == ref and resp.model == "sql-lora"
    chunks = client.chat.completions.create(
        model="sql-lora", messages=MESSAGES, stream=True, **GREEDY
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == ref
    wait_idle(lora_server.engine)


def test_unknown_model_is_404(lora_server):
    with pytest.raises(openai.NotFoundError) as exc:
        lora_server.client().completions.create(model="nope", prompt=PROMPT, max_tokens=2)
    body = exc.value.body
    assert body["message"].startswith("The model `nope` does not exist.")
    assert "`sql-lora`" in body["message"] and body["param"] == "model"


def test_models_lists_base_and_adapters_with_their_parent(lora_server, adapters):
    cards = {m.id: m for m in lora_server.client().models.list().data}
    assert cards[BASE].parent is None
    lora = cards["sql-lora"].model_dump()
    assert (lora["parent"], lora["root"]) == (BASE, adapters["sql"])


# ---- loading and unloading at run time -------------------------------------------------------


def test_load_use_unload_then_404(lora_server, offline, adapters):
    loaded = lora_server.post(
        "/v1/load_lora_adapter", json={"lora_name": "other", "lora_path": adapters["other"]}
    )
    assert loaded.status_code == 200 and "other" in loaded.text
    client = lora_server.client()
    assert "other" in {m.id for m in client.models.list().data}

    resp = client.completions.create(model="other", prompt=PROMPT, **GREEDY)
    assert resp.choices[0].text == _offline_text(offline, LoRARequest("o", 7, adapters["other"]))

    unloaded = lora_server.post("/v1/unload_lora_adapter", json={"lora_name": "other"})
    assert unloaded.status_code == 200, unloaded.text
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="other", prompt=PROMPT, max_tokens=2)
    assert "other" not in {m.id for m in client.models.list().data}
    again = lora_server.post("/v1/unload_lora_adapter", json={"lora_name": "other"})
    assert again.status_code == 404 and again.json()["error"]["param"] == "lora_name"
    wait_idle(lora_server.engine)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"lora_name": "gone", "lora_path": "/no/such/adapter"}, "no adapter_config.json"),
        ({"lora_name": "big", "lora_path": "too_big"}, "above max_lora_rank=16"),
        ({"lora_name": "sql-lora", "lora_path": "sql"}, "already loaded"),
        ({"lora_name": BASE, "lora_path": "sql"}, "base model"),
        ({"lora_name": "x"}, "lora_path"),
    ],
)
def test_bad_load_is_400_and_the_server_keeps_serving(lora_server, adapters, body, expected):
    if body.get("lora_path") in adapters:
        body = {**body, "lora_path": adapters[body["lora_path"]]}
    resp = lora_server.post("/v1/load_lora_adapter", json=body)
    assert resp.status_code == 400, resp.text
    assert expected in resp.json()["error"]["message"]
    if body["lora_name"] in ("gone", "big"):  # a failed load leaves no name behind
        assert body["lora_name"] not in {m.id for m in lora_server.client().models.list().data}
    ok = lora_server.client().completions.create(model="sql-lora", prompt=PROMPT, max_tokens=2)
    assert ok.usage.completion_tokens == 2
    wait_idle(lora_server.engine)


def test_unloading_an_adapter_in_use_is_409_until_its_requests_finish(lora_server, adapters):
    client = lora_server.client()
    body = {"lora_name": "busy", "lora_path": adapters["other"]}
    assert lora_server.post("/v1/load_lora_adapter", json=body).status_code == 200
    stream = client.completions.create(
        model="busy", prompt=PROMPT, stream=True, temperature=0.0, max_tokens=200,
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    next(iter(stream))  # the request is running
    refused = lora_server.post("/v1/unload_lora_adapter", json={"lora_name": "busy"})
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"]["type"] == "ConflictError"
    assert "busy" in {m.id for m in client.models.list().data}  # still served
    stream.close()  # the client leaves: its request is aborted
    wait_idle(lora_server.engine)
    resp = lora_server.post("/v1/unload_lora_adapter", json={"lora_name": "busy"})
    assert resp.status_code == 200, resp.text


def test_async_llm_add_list_remove(lora_server, adapters):
    """The AsyncLLM methods the routes use, through the core inbox (run on the server's loop)."""
    import asyncio

    engine = lora_server.engine
    loop = engine._loop_task.get_loop()

    async def scenario() -> tuple[list[int], bool, list[int]]:
        await engine.add_lora(LoRARequest("direct", 99, adapters["other"]))
        listed = sorted(r.lora_int_id for r in await engine.list_loras())
        removed = await engine.remove_lora(99)
        return listed, removed, sorted(r.lora_int_id for r in await engine.list_loras())

    listed, removed, after = asyncio.run_coroutine_threadsafe(scenario(), loop).result(30)
    assert 99 in listed and removed and 99 not in after


# ---- switches, start-up and the command line -------------------------------------------------


@pytest.fixture(scope="module")
def idle_lora_engine(tiny_llama_dir) -> AsyncLLM:
    """An engine that never serves: for build_app checks that need no HTTP."""
    return _lora_engine(tiny_llama_dir)


@pytest.mark.parametrize(("env", "present"), [(None, False), ("0", False), ("true", True)])
def test_runtime_lora_routes_exist_only_with_the_env_var(
    monkeypatch, idle_lora_engine, env, present
):
    if env is None:
        monkeypatch.delenv(api_server.RUNTIME_LORA_ENV, raising=False)
    else:
        monkeypatch.setenv(api_server.RUNTIME_LORA_ENV, env)
    paths = {route.path for route in build_app(idle_lora_engine).routes}
    assert ("/v1/load_lora_adapter" in paths) is present
    assert ("/v1/unload_lora_adapter" in paths) is present


def test_a_bad_static_module_stops_start_up(idle_lora_engine, adapters):
    modules = [LoRAModulePath("big", adapters["too_big"])]
    with pytest.raises(ValueError, match=r"--lora-modules big=.*above max_lora_rank"):
        build_app(idle_lora_engine, lora_modules=modules)
    twice = [LoRAModulePath("a", adapters["sql"]), LoRAModulePath("a", adapters["other"])]
    with pytest.raises(ValueError, match="already loaded"):
        build_app(idle_lora_engine, lora_modules=twice)


def test_lora_modules_need_enable_lora(tiny_llama_dir, adapters):
    with pytest.raises(ValueError, match="needs --enable-lora"):
        build_app(tiny_engine(tiny_llama_dir), lora_modules=[LoRAModulePath("s", adapters["sql"])])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sql-lora=/adapters/sql", LoRAModulePath("sql-lora", "/adapters/sql")),
        ("a=/p=q", LoRAModulePath("a", "/p=q")),  # only the first '=' splits
        ('{"name": "x", "path": "/p"}', LoRAModulePath("x", "/p")),
        ('{"name": "x", "path": "/p", "base_model_name": "b"}', LoRAModulePath("x", "/p", "b")),
    ],
)
def test_parse_lora_module(text, expected):
    assert parse_lora_module(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sql-lora", "expected name=path"),
        ("=/p", "expected name=path"),
        ("a=", "expected name=path"),
        ('{"name": "x"}', "'path' must be a non-empty string"),
        ('{"name": "x", "path": "/p", "rank": 8}', "unknown keys ['rank']"),
        ("{not json", "not valid JSON"),
    ],
)
def test_parse_lora_module_errors(text, expected):
    with pytest.raises(ValueError, match=expected.replace("[", r"\[").replace("]", r"\]")):
        parse_lora_module(text)


def test_serve_flags_reach_run_server(monkeypatch, capsys):
    seen = {}
    monkeypatch.setattr(api_server, "run_server", lambda args: seen.update(vars(args)))
    json_form = '{"name": "b", "path": "/y"}'
    cli_main(["serve", "/ckpt", "--enable-lora", "--max-loras", "2", "--max-lora-rank", "8",
              "--lora-modules", "a=/x", json_form])  # fmt: skip
    assert seen["lora_modules"] == [LoRAModulePath("a", "/x"), LoRAModulePath("b", "/y")]
    assert (seen["enable_lora"], seen["max_loras"], seen["max_lora_rank"]) == (True, 2, 8)
    with pytest.raises(SystemExit) as exc:
        cli_main(["serve", "--lora-modules", "no-equals-sign"])
    assert exc.value.code == 2
    assert "--lora-modules: expected name=path" in capsys.readouterr().err


def test_serve_command_refuses_a_bad_adapter_at_start_up(tiny_llama_dir, adapters):
    cmd = [sys.executable, "-m", "vllm_mini.entrypoints.cli.main", "serve", str(tiny_llama_dir)]
    cmd += ["--max-model-len", "128", "--kv-cache-memory-bytes", "1048576", "--enable-lora"]
    cmd += ["--lora-modules", f"big={adapters['too_big']}", "--port", "0"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "--lora-modules big=" in proc.stderr and "above max_lora_rank" in proc.stderr
