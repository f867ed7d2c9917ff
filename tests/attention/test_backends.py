"""Attention backends behind one interface: one list in the selector, capabilities on the backend
class, and no code outside a backend's own module asking for a backend by name."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from vllm_mini.attention.backends.abstract import AttentionBackend
from vllm_mini.attention.backends.naive import NaiveAttentionImpl
from vllm_mini.attention.backends.paged import PagedAttentionImpl
from vllm_mini.attention.selector import ATTENTION_BACKENDS, PAGED_BACKENDS, get_attn_backend

ROOT = Path(__file__).resolve().parents[2]


def test_every_backend_is_listed_once_with_its_capabilities():
    assert list(ATTENTION_BACKENDS) == ["naive", "torch", "triton", "cpu", "cuda"]
    for name, backend in ATTENTION_BACKENDS.items():
        assert issubclass(backend, AttentionBackend) and backend.name == name
    naive = get_attn_backend("naive")
    assert not naive.uses_paged_kv_cache and not naive.supports_prefix_caching
    assert isinstance(naive.make_impl(4, 8, 0.5, 2), NaiveAttentionImpl)
    torch_backend = get_attn_backend("torch")
    assert torch_backend.uses_paged_kv_cache and torch_backend.supports_prefix_caching
    impl = torch_backend.make_impl(4, 8, 0.5, 2)
    assert isinstance(impl, PagedAttentionImpl) and impl.ops_name == "torch"


def test_the_other_backend_lists_agree_with_the_selector():
    from vllm_mini.attention import ops
    from vllm_mini.config.attention import ATTENTION_BACKENDS as CONFIG_BACKENDS

    assert tuple(CONFIG_BACKENDS) == tuple(ATTENTION_BACKENDS)
    assert tuple(ops.PAGED_BACKENDS) == PAGED_BACKENDS


def test_unknown_backend_names_the_choices():
    with pytest.raises(ValueError, match=r"one of \['naive', 'torch'"):
        get_attn_backend("flash")


def test_no_backend_name_checks_outside_the_backends_and_the_selector():
    allowed = {"vllm_mini/attention/selector.py", "vllm_mini/attention/backends/naive.py"}
    pattern = re.compile(r"""[!=]=\s*["']naive["']|["']naive["']\s*[!=]=""")
    offenders = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "vllm_mini").rglob("*.py")
        if str(path.relative_to(ROOT)) not in allowed and pattern.search(path.read_text())
    ]
    assert offenders == []


def test_naive_backend_turns_prefix_caching_off(tiny_llama_dir):
    from vllm_mini.engine.arg_utils import EngineArgs

    config = EngineArgs(model=str(tiny_llama_dir), attention_backend="naive").create_engine_config()
    assert config.cache_config.enable_prefix_caching is False
    config = EngineArgs(model=str(tiny_llama_dir), attention_backend="torch").create_engine_config()
    assert config.cache_config.enable_prefix_caching is True
