"""The README is a short manual whose every link into docs/ (and elsewhere in the repo) resolves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_readme_stays_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 155


def test_readme_links_every_doc():
    linked = {target for target in LINK.findall((ROOT / "README.md").read_text())}
    docs = {f"docs/{page.name}" for page in (ROOT / "docs").glob("*.md")}
    assert docs <= linked, f"docs not linked from the README: {sorted(docs - linked)}"


@pytest.mark.parametrize("page", PAGES, ids=[page.name for page in PAGES])
def test_every_relative_link_resolves(page):
    broken = [target for target in LINK.findall(page.read_text())
              if not target.startswith(("http://", "https://", "mailto:")) and not (page.parent / target).exists()]
    assert not broken, f"{page.relative_to(ROOT)}: broken links {broken}"
