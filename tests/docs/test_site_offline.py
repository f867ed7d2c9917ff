"""The built site works offline: every Mermaid diagram renders as SVG with the network off.

Material loads Mermaid from a CDN unless a `mermaid` is already on the page; the site ships its
own copy (docs/javascripts/mermaid.min.js, through mkdocs.yml's extra_javascript). This builds
the site into a temporary folder and opens each page that has a diagram in headless Chromium
that can reach no host, then checks that each diagram became an SVG and no source text is left.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.docs.site_browser import (
    CHROMIUM,
    REPO,
    add_probe,
    build_site,
    chromium,
    drawn_diagrams,
    pages_with_mermaid,
)

MERMAID = REPO / "docs" / "javascripts" / "mermaid.min.js"

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="chromium is not installed (apt-get install -y chromium)"
)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    return build_site(tmp_path_factory.mktemp("site") / "site")


def test_mermaid_ships_with_the_site_and_no_page_points_at_a_cdn(site):
    source = (REPO / "docs" / "javascripts" / "mermaid.SOURCE.txt").read_text()
    version = re.search(r"^version: (\S+)$", source, re.M).group(1)
    assert f'version:"{version}"' in MERMAID.read_text()
    assert (
        (REPO / "docs" / "javascripts" / "mermaid.LICENSE.txt")
        .read_text()
        .startswith("The MIT License")
    )
    assert (site / "javascripts" / "mermaid.min.js").read_bytes() == MERMAID.read_bytes()
    for page in site.rglob("*.html"):
        html = page.read_text()
        assert "mermaid.min.js" in html, f"{page.relative_to(site)} does not load Mermaid"
        cdn = re.search(r"<script[^>]*src=\"https?://[^\"]*mermaid", html)
        assert not cdn, f"{page.relative_to(site)} loads Mermaid from the network"


def test_every_diagram_renders_as_svg_with_the_network_off(site, tmp_path):
    pages = pages_with_mermaid(site)
    assert site / "index.html" in pages, "the index's request-path diagram is missing"
    failures = []
    for i, (page, expected) in enumerate(pages.items()):
        add_probe(page)
        drawn: list[int] = []
        for attempt in range(2):  # a rare cold start can run out of virtual time
            dom = chromium(page, tmp_path / f"profile{i}_{attempt}", "--dump-dom")
            drawn = drawn_diagrams(dom)
            if len(drawn) == expected:
                break
        name = str(page.relative_to(site))
        if len(drawn) != expected or min(drawn, default=0) < 10:
            failures.append(f"{name}: {expected} diagrams, drawn: {drawn}")
        elif re.search(r"<pre class=\"(mermaid)?\">", dom):
            failures.append(f"{name}: a diagram is still shown as source text")
    assert not failures, "\n".join(failures)
