"""README.md and docs/: every relative link resolves inside the repository, and the
names the examples use exist in the example fleet."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
# [text](target) and [text](target "title"); images too.
LINK_RE = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_RE = re.compile(r"^\s*\[[^\]]+\]:\s*(\S+)", re.M)
FENCE_RE = re.compile(r"^```.*?^```", re.M | re.S)


def prose(path: Path) -> str:
    """The file without its fenced code blocks (shell examples are not links)."""
    return FENCE_RE.sub("", path.read_text(encoding="utf-8"))


def anchors(path: Path) -> set[str]:
    """GitHub's anchors of a Markdown file's headings."""
    found: set[str] = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*$", prose(path), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        found.add(slug)
    return found


def relative_links(path: Path) -> list[str]:
    text = prose(path)
    targets = LINK_RE.findall(text) + REFERENCE_RE.findall(text)
    return [t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", t, re.I)]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves_inside_the_repository(doc: Path) -> None:
    broken = []
    for target in relative_links(doc):
        file_part, _, fragment = target.partition("#")
        resolved = (doc.parent / file_part).resolve() if file_part else doc
        if not resolved.is_relative_to(ROOT):
            broken.append(f"{target}: outside the repository")
        elif not resolved.exists():
            broken.append(f"{target}: no such file")
        elif fragment and resolved.suffix == ".md" and fragment not in anchors(resolved):
            broken.append(f"{target}: no heading #{fragment}")
    assert not broken, broken


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_doc_names_a_file_outside_the_repository(doc: Path) -> None:
    text = doc.read_text(encoding="utf-8")
    assert "shared/docs" not in text
    assert "protocol-v1.md" not in text


def test_the_examples_use_names_the_example_fleet_declares() -> None:
    fleet = yaml.safe_load((ROOT / "docs" / "fleet.example.yaml").read_text())
    server_types, deps = set(fleet["serverTypes"]), set(fleet["deps"])
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for name in re.findall(r"--server-type ([a-z0-9][\w.-]*[a-z0-9])\b", text):
            assert name in server_types, f"{doc.name}: server type {name} is not in the example"
        for line in re.findall(r"depman jobs submit --server-type \S+ ([^-\n][^\n]*?) --", text):
            for dep in line.split():
                assert dep in deps, f"{doc.name}: dep {dep} is not in the example"
