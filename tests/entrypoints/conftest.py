"""Fixtures: one tiny-model server for the whole session, and the offline LLM as its peer."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.entrypoints.server_utils import MAX_MODEL_LEN, SERVED_NAME, Server, serve, tiny_engine
from vllm_mini import LLM


@pytest.fixture(scope="session")
def server(tiny_llama_dir) -> Iterator[Server]:
    with serve(tiny_engine(tiny_llama_dir), served_model_name=SERVED_NAME) as s:
        yield s


@pytest.fixture(scope="session")
def reference_llm(tiny_llama_dir) -> LLM:
    """The offline LLM on the same checkpoint: the peer the server's outputs must match."""
    return LLM(str(tiny_llama_dir), max_model_len=MAX_MODEL_LEN, kv_cache_memory_bytes=1 << 22)
