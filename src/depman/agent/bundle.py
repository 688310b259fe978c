"""The one-file zipapp: only ``depman/agent`` plus a minimal ``depman/__init__.py``."""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

AGENT_DIR = Path(__file__).resolve().parent
SHEBANG = b"#!/usr/bin/env python3\n"
PACKAGE_INIT = '"""depman (agent bundle): only depman.agent is included."""\n'
MAIN = "from depman.agent.main import main\n\nraise SystemExit(main())\n"
# Fixed timestamps: the same sources always give the same bytes and sha256.
EPOCH = (1980, 1, 1, 0, 0, 0)


def bundle_bytes() -> bytes:
    """The zipapp as bytes (what ``GET /agent/depman-agent.pyz`` serves)."""
    entries = {"__main__.py": MAIN, "depman/__init__.py": PACKAGE_INIT}
    for source in sorted(AGENT_DIR.glob("*.py")):
        entries[f"depman/agent/{source.name}"] = source.read_text(encoding="utf-8")
    buffer = io.BytesIO()
    buffer.write(SHEBANG)
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name in sorted(entries):
            info = zipfile.ZipInfo(name, date_time=EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, entries[name])
    return buffer.getvalue()


def write_bundle(path: Path | str) -> str:
    """Write the zipapp to ``path`` (executable) and return its sha256."""
    data = bundle_bytes()
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_bytes(data)
    tmp.chmod(0o755)
    tmp.replace(target)
    return hashlib.sha256(data).hexdigest()
