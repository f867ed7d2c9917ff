"""Every vLLM path the course cites exists at the one vLLM commit the course pins.

docs/vllm_pin.txt names the commit; docs/vllm_paths_at_pin.txt lists the paths checked to exist
there, and old paths (named by the reading guide or by older course text) with where they live at
the pin. These tests read the lessons' and the site's markdown and the "Mirrors vllm/..." module
docstrings in vllm_mini/ and hold them to that list, without any network:

- a link into vLLM's repository is a permalink to the pinned commit, and its path is on the list;
- a vLLM path written without a link is an old path from the list's errata (a historical name),
  or a csrc/ path that is our own;
- a docstring's "Mirrors" path is on the list; one that is an old path is reported as stale (an
  expected failure naming the path at the pin), so the docstring can be fixed.

VLLM_SOURCE_DIR=/path/to/vllm (a clone checked out at the pin, or the release's unpacked sdist)
additionally checks the list itself against that tree; see the list's header.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PIN_FILE = REPO / "docs" / "vllm_pin.txt"
PATHS_FILE = REPO / "docs" / "vllm_paths_at_pin.txt"
ERRATA_PAGE = REPO / "docs" / "reading_vllm.md"

# Any link into vLLM's repository that names a ref: blob/<ref>/<path> or tree/<ref>[/<path>].
VLLM_LINK = re.compile(
    r"https://github\.com/vllm-project/vllm/(blob|tree)/([^/\s)\"'>#]+)(/[^\s)\"'>#?]*)?"
)
# A markdown link whose target is such a link; its label is not a second citation.
MD_VLLM_LINK = re.compile(r"\[[^\]]*\]\(https://github\.com/vllm-project/vllm/[^)]*\)")
# A path written out: vllm/... or csrc/..., with {a,b} alternatives and * globs allowed.
PATH_MENTION = re.compile(r"(?<![\w/.\-])((?:vllm|csrc)/(?:[\w.*\-]+|/|\{[\w.,/\-]*\})+)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)


def read_pin() -> dict[str, str]:
    fields = {}
    for line in PIN_FILE.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            fields[key.strip()] = value.strip()
    return fields


PIN = read_pin()["VLLM_COMMIT"]


def read_paths() -> tuple[str, set[str], dict[str, list[str]]]:
    """(commit named in the header, verified paths, old path -> its places at the pin)."""
    commit, verified, old = "", set(), {}
    for line in PATHS_FILE.read_text().splitlines():
        if line.startswith("# commit:"):
            commit = line.split(":", 1)[1].split()[0]
        elif line.strip() and not line.startswith("#"):
            if "->" in line:
                left, right = (part.strip() for part in line.split("->"))
                old[left] = [] if right == "-" else [p.strip() for p in right.split(",")]
            else:
                verified.add(line.strip())
    return commit, verified, old


COMMIT_IN_LIST, VERIFIED, OLD = read_paths()


def expand(path: str) -> list[str]:
    """`vllm/config/{a,b}.py` -> both paths; trailing sentence punctuation dropped."""
    path = path.rstrip(".,")
    match = re.search(r"\{([^}]*)\}", path)
    if not match:
        return [path]
    head, tail = path[: match.start()], path[match.end() :]
    return [p for alt in match.group(1).split(",") for p in expand(head + alt.strip() + tail)]


def mentions(text: str) -> list[str]:
    found = [p for raw in PATH_MENTION.findall(text) for p in expand(raw)]
    return [p for p in found if "*" not in p and p not in ("vllm/", "csrc/")]


def ours(path: str) -> bool:
    """csrc/ is also this repository's kernel folder; a path that exists here is ours."""
    return path.startswith("csrc/") and (REPO / path).exists()


def markdown_files() -> list[Path]:
    files = sorted((REPO / "lessons").rglob("*.md")) + sorted((REPO / "docs").rglob("*.md"))
    return [f for f in files if f.is_file()]


def mirrors_docstrings() -> dict[Path, str]:
    found = {}
    for path in sorted((REPO / "vllm_mini").rglob("*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        if "Mirrors" in doc:
            # A {a,b} list may be broken across lines; join it before matching.
            found[path] = re.sub(r",\s*\n\s*", ",", doc)
    return found


def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def test_pin_file_and_path_list_name_the_same_commit():
    pin = read_pin()
    assert re.fullmatch(r"[0-9a-f]{40}", pin["VLLM_COMMIT"]), pin
    assert re.fullmatch(r"v\d+\.\d+\.\d+", pin["VLLM_TAG"]), pin
    assert COMMIT_IN_LIST == pin["VLLM_COMMIT"], f"{rel(PATHS_FILE)} header: {COMMIT_IN_LIST}"


def test_path_list_is_well_formed():
    for path in VERIFIED | set(OLD):
        assert re.fullmatch(r"[\w.\-/]+", path) and not path.startswith("/"), path
    for old, new in OLD.items():
        for path in new:
            assert path in VERIFIED, f"{old} -> {path}: the new place must be a verified path"


@pytest.mark.parametrize("md", markdown_files(), ids=rel)
def test_every_link_into_vllm_is_a_permalink_to_the_pin(md):
    bad = []
    for kind, ref, path in VLLM_LINK.findall(md.read_text()):
        if ref != PIN:
            bad.append(f"{kind}/{ref}{path}: link to commit {PIN}, not {ref}")
            continue
        path = path.lstrip("/")
        if not path:
            continue
        cited = path + "/" if kind == "tree" else path
        if cited not in VERIFIED:
            bad.append(f"{cited}: not in {rel(PATHS_FILE)} (check it exists at the pin, add it)")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("md", markdown_files(), ids=rel)
def test_vllm_paths_without_a_link_are_only_old_names(md):
    text = MD_VLLM_LINK.sub("", md.read_text())
    code = "\n".join(m.group(0) for m in FENCE.finditer(text))
    prose = FENCE.sub("", text)
    bad = []
    for path in mentions(prose):
        if not (ours(path) or path in OLD):
            hint = "link it as a permalink" if path in VERIFIED else "not at the pin"
            bad.append(f"{path}: {hint} (see {rel(PATHS_FILE)})")
    for path in mentions(code):  # commands cannot hold links, but must name real files
        if not (ours(path) or path in OLD or path in VERIFIED):
            bad.append(f"{path} (in a code block): not at the pin")
    assert not bad, "\n".join(bad)


def docstring_cases():
    cases = []
    for path, doc in mirrors_docstrings().items():
        cited = [p for p in mentions(doc) if not ours(p)]
        stale = [f"{p} (at the pin: {', '.join(OLD[p]) or 'gone'})" for p in cited if p in OLD]
        marks = (
            [pytest.mark.xfail(reason="stale: " + "; ".join(stale), strict=False)] if stale else []
        )
        cases.append(pytest.param(path, cited, id=rel(path), marks=marks))
    return cases


@pytest.mark.parametrize(("module", "cited"), docstring_cases())
def test_mirrors_docstrings_cite_paths_at_the_pin(module, cited):
    assert cited, f"{rel(module)}: a Mirrors docstring without a vllm/ path"
    missing = [p for p in cited if p not in VERIFIED]
    assert not missing, f"{rel(module)} cites {missing}, not in {rel(PATHS_FILE)}"


def test_errata_page_maps_every_old_path_and_is_linked_from_both_entry_points():
    page = ERRATA_PAGE.read_text()
    for old, new in OLD.items():
        assert f"`{old}`" in page, f"{old} has no row in {rel(ERRATA_PAGE)}"
        for path in new:
            kind = "tree" if path.endswith("/") else "blob"
            url = f"https://github.com/vllm-project/vllm/{kind}/{PIN}/{path.rstrip('/')}"
            assert url in page, f"{old}: {rel(ERRATA_PAGE)} does not link {path}"
    assert "reading_vllm.md" in (REPO / "lessons" / "README.md").read_text()
    assert "reading_vllm.md" in (REPO / "docs" / "index.md").read_text()


@pytest.mark.skipif(
    "VLLM_SOURCE_DIR" not in os.environ, reason="set VLLM_SOURCE_DIR to a vLLM tree"
)
def test_listed_paths_exist_in_a_vllm_tree_at_the_pin():
    tree = Path(os.environ["VLLM_SOURCE_DIR"])
    if (tree / ".git").exists():
        head = subprocess.run(
            ["git", "-C", str(tree), "rev-parse", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        assert head == PIN, f"{tree} is at {head}, not the pin {PIN}"
    else:  # an unpacked sdist records the commit it was built from
        version = (tree / "vllm" / "_version.py").read_text()
        commit_id = re.search(r"commit_id = '?g?([0-9a-f]+)", version)
        assert commit_id and PIN.startswith(commit_id.group(1)), version
    missing = sorted(p for p in VERIFIED if not (tree / p).exists())
    assert not missing, "listed but absent at the pin:\n" + "\n".join(missing)
