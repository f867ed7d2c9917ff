"""Fixtures for the visualizer tests: a trace recorded from the real engine on a tiny model."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# The app is a top-level package next to vllm_mini/; make it importable under any pytest runner.
REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


@pytest.fixture(scope="session")
def prefix_trace_path(tiny_llama_dir, tmp_path_factory) -> Path:
    """The app's prefix-caching preset, run on the tiny model and saved as JSON."""
    from app.record import RunSettings, build_llm, record_trace
    from app.workloads import WORKLOADS, to_tiny_vocab

    workload = WORKLOADS["prefix"]
    settings = RunSettings(model=str(tiny_llama_dir), **workload.settings["tiny"])
    llm = build_llm(settings.model, settings.engine_kwargs())
    trace = record_trace(llm, [to_tiny_vocab(p) for p in workload.prompts], settings)
    trace.model = "tiny random Llama"  # instead of a temp path, for the docs screenshot
    path = tmp_path_factory.mktemp("trace") / "prefix_trace.json"
    trace.save(path)
    return path


@pytest.fixture(scope="session")
def spec_trace_path(tiny_llama_dir, tmp_path_factory) -> Path:
    """The app's speculative-decoding preset (n-gram, 3 drafts), run on the tiny model."""
    from app.record import RunSettings, build_llm, record_trace
    from app.workloads import WORKLOADS, to_tiny_vocab

    workload = WORKLOADS["spec"]
    settings = RunSettings(model=str(tiny_llama_dir), **workload.settings["tiny"])
    llm = build_llm(settings.model, settings.engine_kwargs())
    trace = record_trace(llm, [to_tiny_vocab(p) for p in workload.prompts], settings)
    path = tmp_path_factory.mktemp("trace") / "spec_trace.json"
    trace.save(path)
    return path
