"""Lesson tests reuse the engine tests' tiny random checkpoint (saved with transformers' classes)."""

from tests.conftest import tiny_llama_dir  # noqa: F401
