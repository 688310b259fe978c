"""bench/RESULTS.md reads at a glance, and the README quotes what it holds."""

from __future__ import annotations

import re
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
RESULTS = REPO_ROOT / "bench" / "RESULTS.md"
README = REPO_ROOT / "README.md"
MAX_RESULTS_LINES = 400
NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)*")

sys.path.insert(0, str(REPO_ROOT))
from bench.common import ResultTable, record_results, section_name, split_sections  # noqa: E402


def _figures(text: str) -> set[str]:
    """Every number of `text`, thousands separators dropped (`2,404` -> `2404`)."""
    return {n.replace(",", "") for n in NUMBER.findall(text)}


def _headline_rows() -> list[list[str]]:
    text = README.read_text()
    table = text.split("## Benchmarks", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    cells = [[c.strip() for c in row.strip("|").split(" | ")] for row in rows]
    return [c for c in cells[1:] if not set(c[0]) <= {"-", " "}]


def test_results_hold_one_section_per_benchmark_and_stay_short() -> None:
    text = RESULTS.read_text()
    assert len(text.splitlines()) < MAX_RESULTS_LINES
    _, sections = split_sections(text)
    names = [section_name(s) for s in sections]
    assert len(names) == len(set(names)), names
    for section in sections:  # real recorded runs only: each names its command and machine
        assert "\n`uv run python -m bench." in section and "\nMachine: " in section, section[:200]


def test_readme_headline_figures_are_the_recorded_ones() -> None:
    recorded = _figures(RESULTS.read_text())
    rows = _headline_rows()
    assert len(rows) >= 6
    for benchmark, result, _target in rows:
        missing = sorted(_figures(result) - recorded)
        assert not missing, f"README row {benchmark!r} quotes {missing}, not in bench/RESULTS.md"


def test_a_new_run_replaces_its_section_and_moves_the_old_one_to_history(tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"
    table = ResultTable("t", ["a", "b"])
    table.add("x", "1")
    for run in ("first", "second"):
        record_results("Bench A", f"uv run python -m bench.a {run}", [table], [run], results,
                       history="a")
    record_results("Bench B", "uv run python -m bench.b", [table], [], results, history="b")
    _, sections = split_sections(results.read_text())
    assert [section_name(s) for s in sections] == ["Bench A", "Bench B"]
    assert "- second" in sections[0] and "- first" not in results.read_text()
    history = (tmp_path / "history" / "a.md").read_text()
    assert history.startswith("# Bench A: earlier runs") and "- first" in history
    assert not (tmp_path / "history" / "b.md").exists()
