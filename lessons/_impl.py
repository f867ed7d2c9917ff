"""Pick the implementation a lesson's tests check: `solutions.py` (default) or `exercises.py`.

Lesson directories start with a digit, so they are not importable packages; we load the file by
path. Set LESSON_IMPL=exercises to test your own code.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType


def impl_name() -> str:
    """ "solutions" unless LESSON_IMPL says otherwise ("exercises")."""
    return os.environ.get("LESSON_IMPL", "solutions")


def load_impl(test_file: str, name: str | None = None) -> ModuleType:
    name = name or impl_name()
    path = Path(test_file).with_name(f"{name}.py")
    module_name = f"lesson_{path.parent.name}_{name}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module
