"""Build the docs site and look at it in headless Chromium with the network off.

Shared by tests/docs/test_site_offline.py and by screenshot_index.py (which makes
docs/images/index.png). "Network off" means every host name fails to resolve and every request
that still tries goes to a closed proxy port, so a page can only use what the built site holds.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
OFFLINE = ("--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=http://127.0.0.1:9")

# Material draws each diagram into a *closed* shadow root, invisible to --dump-dom. Loaded
# first in <head>, this opens those roots and writes onto each host how many SVG elements the
# diagram got, so the dumped DOM can say what was drawn.
PROBE = """(() => {
  const attach = Element.prototype.attachShadow;
  const setHTML = Object.getOwnPropertyDescriptor(ShadowRoot.prototype, "innerHTML").set;
  Element.prototype.attachShadow = function (init) {
    const root = attach.call(this, { ...init, mode: "open" });
    const host = this;
    Object.defineProperty(root, "innerHTML", {
      set(html) {
        setHTML.call(root, html);
        const svg = root.querySelector("svg");
        host.setAttribute("data-probe-svg", svg ? String(svg.querySelectorAll("*").length) : "0");
      },
    });
    return root;
  };
})();
"""


def build_site(dest: Path) -> Path:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    cmd = [sys.executable, "-m", "mkdocs", "build", "-q", "-d", str(dest)]
    subprocess.run(cmd, cwd=REPO, env=env, check=True, timeout=300)
    return dest


def pages_with_mermaid(site: Path) -> dict[Path, int]:
    """Built page -> number of diagrams on it (superfences turns each fence into one <pre>)."""
    pages = {}
    for page in sorted(site.rglob("*.html")):
        count = len(re.findall(r'<pre class="mermaid">', page.read_text()))
        if count:
            pages[page] = count
    return pages


def add_probe(page: Path) -> None:
    probe = page.parent / "_probe.js"
    probe.write_text(PROBE)
    html = page.read_text().replace("<head>", f'<head><script src="{probe.as_uri()}"></script>', 1)
    page.write_text(html)


def chromium(page: Path, profile: Path, *args: str, window=(1280, 1600), wait_ms=15000) -> str:
    """Open one page offline; return the DOM (with --dump-dom) once virtual time runs out."""
    cmd = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", *OFFLINE,
        f"--user-data-dir={profile}", f"--virtual-time-budget={wait_ms}", f"--timeout={wait_ms}",
        f"--window-size={window[0]},{window[1]}", "--hide-scrollbars", *args, page.as_uri(),
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=wait_ms / 1000 + 60)
    return result.stdout


def drawn_diagrams(dom: str) -> list[int]:
    """SVG element counts of the diagrams Material drew (0: it drew an empty one)."""
    return [int(n) for n in re.findall(r'<div class="mermaid" data-probe-svg="(\d+)"', dom)]
