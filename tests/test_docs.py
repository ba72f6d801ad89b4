"""The README and docs/: every link resolves, every generated block matches its source."""

import re
import runpy

import pytest
from conftest import ROOT

UPDATE = runpy.run_path(str(ROOT / "experiments" / "update_docs.py"))
DOCUMENTS = UPDATE["documents"]()
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def anchors(path):
    """GitHub's anchors for the headings of a Markdown file."""
    headings = re.findall(r"^#+ (.+)$", path.read_text(), re.MULTILINE)
    slugs = set()
    for heading in headings:
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        slugs.add(slug)
    return slugs


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.name)
def test_every_relative_link_resolves(document):
    broken = []
    for target in LINK.findall(document.read_text()):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        file = document
        if path:
            file = (document.parent / path).resolve()
        if not file.exists():
            broken.append(target)
            continue
        if anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(target)
    assert broken == []


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.name)
def test_generated_file_diff_and_table_blocks_match_their_source(document):
    blocks = UPDATE["BLOCK"].findall(document.read_text())
    for kind, argument, current in blocks:
        if kind in ("file", "diff", "table"):
            assert current == UPDATE["expected"](kind, argument, current, False), argument


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.name)
def test_output_blocks_show_the_command_they_ran(document):
    for kind, argument, current in UPDATE["BLOCK"].findall(document.read_text()):
        if kind == "output":
            assert current.startswith(f"```text\n$ {argument}\n"), argument
