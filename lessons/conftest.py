"""Lesson tests reuse the engine tests' tiny random checkpoint fixture."""

from tests.conftest import smollm2_gguf, tiny_llama_dir  # noqa: F401
