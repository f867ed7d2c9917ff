"""The course in two languages cannot drift: every English page has a Chinese twin with the same
code, commands and links, and the Chinese pages keep to the glossary's terms.

Pages: docs/**/*.md (the site) and lessons/README.md + lessons/*/README.md (the course). The twin
of X.md is X.zh.md (mkdocs-static-i18n's suffix layout). Fenced code blocks must be identical and
in the same order, except Mermaid diagrams, whose labels are prose (only their number must match);
every link target must appear in both versions. docs/glossary.md fixes one Chinese term per
concept; the variants below are the ones it rules out.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Translations the glossary rules out -> the term to use instead.
FORBIDDEN_VARIANTS = {
    "区块": "块",
    "插槽": "槽位",
    "分页注意力": "PagedAttention",
    "页式注意力": "PagedAttention",
    "连续批量": "连续批处理",
    "快取": "缓存",
    "令牌": "token",
    "词元": "token",
    "抢先": "抢占",
    "预先填充": "预填充",
}


def english_pages() -> list[Path]:
    pages = [
        p
        for p in (ROOT / "docs").rglob("*.md")
        if not p.name.endswith(".zh.md") and "lessons" not in p.relative_to(ROOT / "docs").parts
    ]
    pages.append(ROOT / "lessons" / "README.md")
    pages += sorted((ROOT / "lessons").glob("*/README.md"))
    return sorted(pages)


def twin(page: Path) -> Path:
    return page.with_name(page.name[: -len(".md")] + ".zh.md")


FENCE = re.compile(r"^(\s*)(```|~~~)([^\n]*)\n(.*?)^\1\2\s*$", re.MULTILINE | re.DOTALL)
LINK = re.compile(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def code_blocks(text: str) -> tuple[list[str], int]:
    """(non-Mermaid fenced blocks with their info string, number of Mermaid blocks)."""
    blocks, mermaid = [], 0
    for m in FENCE.finditer(text):
        info = m.group(3).strip()
        if info.startswith("mermaid"):
            mermaid += 1
        else:
            blocks.append(f"{info}\n{m.group(4)}")
    return blocks, mermaid


def link_targets(text: str) -> set[str]:
    return {t for t in LINK.findall(text) if not t.startswith("#")}


PAGES = english_pages()


def _id(page: Path) -> str:
    return str(page.relative_to(ROOT))


@pytest.mark.parametrize("page", PAGES, ids=_id)
def test_every_page_has_a_chinese_twin(page: Path):
    assert twin(page).exists(), f"{_id(page)} has no Chinese version {twin(page).name}"


@pytest.mark.parametrize("page", PAGES, ids=_id)
def test_code_and_links_are_identical_in_both_languages(page: Path):
    zh = twin(page)
    if not zh.exists():
        pytest.skip("no twin yet (the test above fails)")
    en_text, zh_text = page.read_text(), zh.read_text()
    en_blocks, en_mermaid = code_blocks(en_text)
    zh_blocks, zh_mermaid = code_blocks(zh_text)
    assert len(zh_blocks) == len(en_blocks), "a code block was added or dropped"
    for i, (a, b) in enumerate(zip(en_blocks, zh_blocks)):
        assert a == b, f"code block {i} differs between {page.name} and {zh.name}"
    assert zh_mermaid == en_mermaid, "a diagram was added or dropped"
    missing = link_targets(en_text) - link_targets(zh_text)
    extra = link_targets(zh_text) - link_targets(en_text)
    assert not missing and not extra, f"links differ: missing {missing}, extra {extra}"


@pytest.mark.parametrize("page", PAGES, ids=_id)
def test_chinese_pages_use_the_glossary_terms(page: Path):
    zh = twin(page)
    if not zh.exists():
        pytest.skip("no twin yet (the first test fails)")
    # Only prose is checked: code may legitimately contain anything.
    prose = FENCE.sub("", zh.read_text())
    found = {bad: good for bad, good in FORBIDDEN_VARIANTS.items() if bad in prose}
    assert not found, f"{zh.name}: use the glossary's terms: {found}"


def _slugify(value: str) -> str:
    """The heading id mkdocs gives by default (Python-Markdown's toc: ASCII letters only)."""
    value = unicodedata.normalize("NFKD", value).encode("ascii", "ignore").decode()
    value = re.sub(r"[^\w\s-]", "", value).strip().lower()
    return re.sub(r"[-\s]+", "-", value)


def heading_ids(page: Path) -> set[str]:
    ids = set()
    for m in re.finditer(r"^#{1,6}\s+(.*?)\s*$", FENCE.sub("", page.read_text()), re.MULTILINE):
        explicit = re.search(r"\{#([\w-]+)\}$", m.group(1))
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", m.group(1).replace("`", ""))
        ids.add(explicit.group(1) if explicit else _slugify(text))
    return ids


@pytest.mark.parametrize("page", PAGES, ids=_id)
def test_anchors_resolve_in_both_languages(page: Path):
    """A link X.md#id must land on a heading in X.md and, from a Chinese page, in X.zh.md: a
    translated heading keeps the English id with `{#id}` (attr_list)."""
    broken = []
    for source in (page, twin(page)):
        if not source.exists():
            continue
        for target in link_targets(source.read_text()):
            if "#" not in target or "://" in target:
                continue
            path, anchor = target.split("#", 1)
            dest = (source.parent / path).resolve() if path else source
            if path and source.name.endswith(".zh.md") and twin(dest).exists():
                dest = twin(dest)
            if dest.suffix == ".md" and dest.exists() and anchor not in heading_ids(dest):
                broken.append(f"{source.name}: {target}")
    assert not broken, f"anchors that do not resolve: {broken}"


def test_the_checker_sees_code_and_links():
    text = 'See [a](x.md) and [b](https://e.org/y "t").\n\n```python\nprint(1)\n```\n'
    assert code_blocks(text) == (["python\nprint(1)\n"], 0)
    assert link_targets(text) == {"x.md", "https://e.org/y"}
    assert code_blocks("```mermaid\nflowchart TD\n```\n") == ([], 1)
