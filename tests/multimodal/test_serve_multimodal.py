"""/v1/chat/completions with images, through the openai client: a data URL in a chat message gives
the offline LLM's output; file:// URLs work only under --allowed-local-media-path; every bad image
is a 400 naming the problem, and the server keeps serving with no KV block held."""

from __future__ import annotations

import openai
import pytest

from tests.entrypoints.server_utils import serve, wait_idle
from tests.multimodal.llava_checkpoint import random_image
from tests.multimodal.test_inputs_and_errors import data_url
from vllm_mini import LLM, SamplingParams
from vllm_mini.engine.arg_utils import EngineArgs
from vllm_mini.engine.async_llm import AsyncLLM


@pytest.fixture(scope="module")
def server(tiny_llava_dir):
    engine = AsyncLLM.from_engine_args(
        EngineArgs(
            model=str(tiny_llava_dir),
            kv_cache_memory_bytes=1 << 22,
            disable_log_stats=True,
            allowed_local_media_path=str(tiny_llava_dir),
            limit_mm_per_prompt={"image": 1},
        )
    )
    with serve(engine, served_model_name="tiny-llava") as s:
        yield s


def _chat(client, parts, max_tokens=5):
    return client.chat.completions.create(
        model="tiny-llava",
        messages=[{"role": "user", "content": parts}],
        max_tokens=max_tokens,
        temperature=0.0,
    )


def test_openai_client_sends_an_image_data_url(server, tiny_llava_dir):
    image = random_image(7)
    parts = [
        {"type": "image_url", "image_url": {"url": data_url(image)}},
        {"type": "text", "text": "w7 w8"},
    ]
    response = _chat(server.client(), parts)
    offline = LLM(str(tiny_llava_dir), kv_cache_memory_bytes=1 << 22)
    expected = offline.chat(
        [{"role": "user", "content": parts}],
        SamplingParams(max_tokens=5, temperature=0.0),
        use_tqdm=False,
    )[0]
    assert response.choices[0].message.content == expected.outputs[0].text
    assert response.usage.prompt_tokens == len(expected.prompt_token_ids)
    wait_idle(server.engine)


def test_file_url_inside_the_allowed_directory(server, tiny_llava_dir):
    path = tiny_llava_dir / "served.png"
    random_image(8).save(path)
    part = {"type": "image_url", "image_url": {"url": f"file://{path}"}}
    assert _chat(server.client(), [part]).choices[0].message.content is not None
    wait_idle(server.engine)


@pytest.mark.parametrize(
    "url, error",
    [
        ("data:image/png;base64,aGVsbG8gd29ybGQ=", "could not be decoded"),
        ("https://example.com/cat.png", "never fetches from the network"),
        ("file:///etc/passwd", "outside the allowed directory"),
        (data_url(random_image(0), "TIFF"), "unsupported image format"),
    ],
)
def test_bad_images_are_400s_and_the_server_keeps_serving(server, url, error):
    client = server.client()
    with pytest.raises(openai.BadRequestError, match=error):
        _chat(client, [{"type": "image_url", "image_url": {"url": url}}])
    good = {"type": "image_url", "image_url": {"url": data_url(random_image(9))}}
    assert _chat(client, [good]).choices[0].finish_reason == "length"
    wait_idle(server.engine)


def test_more_images_than_allowed_is_a_400(server):
    part = {"type": "image_url", "image_url": {"url": data_url(random_image(1))}}
    with pytest.raises(openai.BadRequestError, match="at most 1 image"):
        _chat(server.client(), [part, part])
    wait_idle(server.engine)
