"""Make docs/images/index.png: the site's front page as headless Chromium shows it offline.

    .venv/bin/python -m tests.docs.screenshot_index

Builds the site into a temporary folder, opens index.html with the network off (so the picture
also shows that the request-path diagram renders from the copy of Mermaid the site ships) and
writes the screenshot. Run it again after changing the index or the theme.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from tests.docs.site_browser import REPO, build_site, chromium

OUT = REPO / "docs" / "images" / "index.png"
WINDOW = (1280, 1800)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        site = build_site(Path(tmp) / "site")
        shot = Path(tmp) / "index.png"
        chromium(site / "index.html", Path(tmp) / "profile", f"--screenshot={shot}", window=WINDOW)
        png = shot.read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n", "chromium wrote no screenshot"
        OUT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, OUT)
    print(f"wrote {OUT.relative_to(REPO)}")


if __name__ == "__main__":
    main()
