"""The documentation holds together: a short README, links that lead somewhere, code that cites pages
that exist (docs/*.md and their numbered sections) instead of design notes outside the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 150  # a README for users; the research log lives in docs/
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
CODE_DIRS = ("hebbrobust", "scripts", "tests", "studies")
CITATION = re.compile(r"docs/(\w+\.md)(?: §(\d+))?")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    return {_slug(m) for m in re.findall(r"^#+ (.+)$", page.read_text(encoding="utf-8"), re.MULTILINE)}


def _code_files() -> list[Path]:
    here = Path(__file__).resolve()
    files = [p for d in CODE_DIRS for p in (ROOT / d).rglob("*") if p.suffix in (".py", ".yaml", ".yml")]
    return [p for p in files if p.resolve() != here]


def test_readme_is_short() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines, at most {README_MAX_LINES}"


def test_docs_pages_exist() -> None:
    names = {p.name for p in PAGES}
    for page in ("science.md", "results.md", "performance.md", "cluster.md", "platform.md"):
        assert page in names


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page: Path) -> None:
    """Every relative link names a file that exists, and its #anchor (if any) a heading in that file."""
    broken = []
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.is_file():
            broken.append(f"{target}: no file {dest}")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.name}")
    assert not broken, f"{page.name}: " + "; ".join(broken)


def test_code_cites_no_design_notes_outside_the_repository() -> None:
    notes = ("SCIENCE" + ".md", "PLATFORM" + ".md")
    citing = [f"{p.relative_to(ROOT)}: {n}" for p in _code_files() for n in notes if n in p.read_text(encoding="utf-8")]
    assert not citing, citing


def test_code_citations_of_docs_exist() -> None:
    """`docs/science.md §2` in a comment: the page exists and has a section headed `## 2.`."""
    missing = []
    for p in _code_files():
        for page, section in CITATION.findall(p.read_text(encoding="utf-8")):
            doc = ROOT / "docs" / page
            if not doc.is_file():
                missing.append(f"{p.relative_to(ROOT)}: docs/{page}")
            elif section and not re.search(rf"^## {section}\. ", doc.read_text(encoding="utf-8"), re.MULTILINE):
                missing.append(f"{p.relative_to(ROOT)}: docs/{page} §{section}")
    assert not missing, missing
