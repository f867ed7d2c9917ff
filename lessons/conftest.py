"""What every lesson's tests share: the tiny random checkpoint, short tracebacks, demo checks.

- `tiny_llama_dir` (the engine tests' tiny random Llama, saved with transformers' classes) and
  `smollm2_gguf` (the default model's file) come from tests/conftest.py.
- A failing lesson test prints pytest's SHORT traceback (the failing lines and the error, no
  function bodies or tensor dumps): what a student needs is "which line of my exercise, which
  message", once (the engine's log lines show under "Captured stderr", not again as "Captured
  log"). An explicit --tb still wins, and tests outside lessons/ keep pytest's defaults:
  pytest asks this conftest only about items under lessons/.
- `@pytest.mark.demo` marks a test that runs a lesson's demo and checks what it prints. Those
  tests hold the demos to their word in `make test`; they check nothing you wrote, so under
  LESSON_IMPL=exercises they are skipped instead of passing for free.
"""

from __future__ import annotations

import os

import pytest

from tests.conftest import smollm2_gguf, tiny_llama_dir  # noqa: F401


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "demo: runs a lesson's demo and checks its output; skipped for exercises"
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("demo") and os.environ.get("LESSON_IMPL") == "exercises":
        pytest.skip("checks the lesson's demo, not your exercises.py")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    option = item.config.option
    if option.tbstyle != "auto":  # the user asked for a style: keep it
        return (yield)
    option.tbstyle = "short"  # read by item.repr_failure while the report is being made
    try:
        report = yield
    finally:
        option.tbstyle = "auto"
    # The engine's log lines already appear under "Captured stderr"; don't print them twice.
    report.sections = [s for s in report.sections if not s[0].startswith("Captured log")]
    return report
