"""The agent imports only the standard library, and its zipapp runs under python3 -I -S."""

from __future__ import annotations

import ast
import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

from depman.agent.bundle import bundle_bytes, write_bundle

AGENT_DIR = Path(__file__).resolve().parents[2] / "src" / "depman" / "agent"


def test_agent_imports_only_stdlib_and_itself() -> None:
    bad = []
    for source in sorted(AGENT_DIR.glob("*.py")):
        tree = ast.parse(source.read_text(), filename=str(source))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: inside depman.agent
                    continue
                names = [node.module or ""]
            for name in names:
                top = name.split(".")[0]
                if name.startswith("depman.agent") or top in sys.stdlib_module_names:
                    continue
                bad.append(f"{source.name}: {name}")
    assert not bad, bad


def test_bundle_holds_only_the_agent(tmp_path: Path) -> None:
    out = tmp_path / "depman-agent.pyz"
    digest = write_bundle(out)
    assert digest == hashlib.sha256(out.read_bytes()).hexdigest() == hashlib.sha256(
        bundle_bytes()).hexdigest()  # reproducible
    with zipfile.ZipFile(out) as archive:
        names = archive.namelist()
        init = archive.read("depman/__init__.py").decode()
    assert "__main__.py" in names
    assert all(n == "__main__.py" or n == "depman/__init__.py" or n.startswith("depman/agent/")
               for n in names)
    assert "depman/agent/download.py" in names and "import" not in init


def test_bundle_runs_isolated_without_site_packages(tmp_path: Path) -> None:
    out = tmp_path / "agent.pyz"
    write_bundle(out)
    version = subprocess.run([sys.executable, "-I", "-S", str(out), "--version"],
                             capture_output=True, text=True, timeout=30, env={})
    assert version.returncode == 0 and version.stdout.startswith("depman-agent/")
    bad = subprocess.run([sys.executable, "-I", "-S", str(out)], capture_output=True, text=True,
                         timeout=30, env={"FCS_API_BASE_URL": "http://127.0.0.1:9/api",
                                          "SERVER_TYPE": "t", "DM_DYNAMIC_MIN_FREE_BYTES": "ten"})
    assert bad.returncode == 2
    assert "DM_DYNAMIC_MIN_FREE_BYTES" in bad.stderr and "Traceback" not in bad.stderr
