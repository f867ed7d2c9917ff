"""The visualizer in a real browser: `streamlit run` + headless Chromium, replaying a trace.

AppTest (test_visualizer_app.py) checks the script; this checks what a student actually gets:
the server starts, the page renders in Chromium, and the HTML block grid survives Streamlit's
sanitizer with one element per physical block. It also takes the screenshot for
docs/visualizer.md (written there only when VLLM_MINI_UPDATE_SCREENSHOT=1).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from app.controls import TRACE_ENV
from vllm_mini.engine.trace import Trace

REPO_ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SCREENSHOT = REPO_ROOT / "docs" / "images" / "visualizer.png"
WINDOW = (1400, 2400)

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="chromium is not installed (apt-get install -y chromium)"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def server(prefix_trace_path, tmp_path):
    port = free_port()
    env = {**os.environ, TRACE_ENV: str(prefix_trace_path)}
    cmd = [
        sys.executable, "-m", "streamlit", "run", str(REPO_ROOT / "app" / "streamlit_app.py"),
        "--server.address", "127.0.0.1", "--server.port", str(port),
        "--server.headless", "true", "--browser.gatherUsageStats", "false",
    ]  # fmt: skip
    log = open(tmp_path / "streamlit.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "streamlit.log").read_text()
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as resp:
                    if resp.read() == b"ok":
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "streamlit did not become healthy in 60 s"
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


def chromium(url: str, profile: Path, *args: str, wait_ms: int) -> str:
    """Run headless Chromium once; --timeout bounds the real time the page gets to render."""
    cmd = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run",
        f"--user-data-dir={profile}", f"--virtual-time-budget={wait_ms}", f"--timeout={wait_ms}",
        f"--window-size={WINDOW[0]},{WINDOW[1]}", "--hide-scrollbars", *args, url,
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=wait_ms / 1000 + 60)
    return result.stdout


def grid_in(dom: str) -> list[tuple[int, str, int]]:
    blocks = re.findall(r'data-block-id="(\d+)" data-state="(\w+)" data-ref-cnt="(\d+)"', dom)
    return [(int(b), state, int(ref)) for b, state, ref in blocks]


def test_browser_renders_the_block_grid_and_takes_a_screenshot(server, prefix_trace_path, tmp_path):
    trace = Trace.load(prefix_trace_path)

    # Open at a step that shows every block state: shared (ref count > 1), cached-free, free.
    def states_shown(i: int) -> tuple[bool, int]:
        blocks = trace.steps[i].blocks
        return any(b[1] > 1 for b in blocks), sum(b[0] == "cached" for b in blocks)

    index = max(range(len(trace.steps)), key=states_shown)
    url = f"{server}/?step={index}"
    expected = [(i, state, ref) for i, (state, ref, _) in enumerate(trace.steps[index].blocks)]
    shot = tmp_path / "visualizer.png"
    dom = ""
    # One Chromium run dumps the DOM and screenshots the same page. Virtual time runs out after a
    # few real seconds whatever the budget, and the websocket that brings the content does not
    # hold it back; a cold server (first sessions import pandas and altair) answers too late, so
    # try again until the page arrives.
    for attempt in range(8):
        args = ("--dump-dom", f"--screenshot={shot}")
        dom = chromium(url, tmp_path / f"profile{attempt}", *args, wait_ms=10000)
        if 'id="kv-block-grid"' in dom and 'id="kv-block-tables"' in dom:
            break
    assert 'id="kv-block-grid"' in dom, "the block grid never rendered in Chromium (8 tries)"
    assert f'data-num-blocks="{trace.num_blocks}"' in dom
    assert grid_in(dom) == expected
    assert any(ref > 1 for _, _, ref in expected) and 'class="kv-ref"' in dom
    assert any(state == "cached" for _, state, _ in expected)
    for request in trace.steps[index].requests:
        assert f'data-request-id="{request.request_id}"' in dom
    assert f"Step {index}: what the scheduler decided" in dom

    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", png[16:24]) == WINDOW  # IHDR width, height
    if os.environ.get("VLLM_MINI_UPDATE_SCREENSHOT") == "1":
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT)
