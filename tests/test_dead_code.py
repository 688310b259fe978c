"""Nothing defined and never called: the same check CI runs before the tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CHECK = Path(__file__).resolve().parent.parent / ".ci" / "dead_code.py"


def test_no_dead_code() -> None:
    result = subprocess.run([sys.executable, str(CHECK)], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, "unused code (delete it, or name its framework caller "\
        f"in .ci/dead_code.py):\n{result.stdout}{result.stderr}"


def test_check_finds_an_unused_function_and_skips_framework_hooks(tmp_path: Path) -> None:
    sys.path.insert(0, str(CHECK.parent))
    try:
        import dead_code
    finally:
        sys.path.remove(str(CHECK.parent))
    (tmp_path / "module.py").write_text(
        "from fastapi import APIRouter\n\nrouter = APIRouter()\n\n\n"
        "def used() -> None: ...\n\n\ndef forgotten() -> None: ...\n\n\n"
        "@router.get('/x')\ndef route() -> None: ...\n\n\nused()\n")
    found = dead_code.find_dead_code([tmp_path])
    assert len(found) == 1 and "forgotten" in found[0], found
