"""Fixtures for stage 10: one tiny random LLaVA checkpoint per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.multimodal.llava_checkpoint import make_tiny_llava


@pytest.fixture(scope="session")
def tiny_llava_dir(tmp_path_factory) -> Path:
    return make_tiny_llava(tmp_path_factory.mktemp("tiny_llava"))
