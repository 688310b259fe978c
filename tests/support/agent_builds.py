"""Agent builds for self-update tests: the real zipapp, with another version or another main."""

from __future__ import annotations

import hashlib
import io
import re
import zipfile

from depman.agent.bundle import bundle_bytes

VERSION_LINE = re.compile(r'^AGENT_VERSION = "[^"]*"$', re.M)
PROTOCOL = "depman/agent/protocol.py"


def pyz_with(version: str, *, main: str | None = None) -> bytes:
    """depman's agent zipapp with AGENT_VERSION = `version` (and `__main__.py` = `main`)."""
    original = bundle_bytes()
    head = original[: original.index(b"PK\x03\x04")]  # the shebang line
    out = io.BytesIO()
    out.write(head)
    with (
        zipfile.ZipFile(io.BytesIO(original)) as source,
        zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as target,
    ):
        for info in source.infolist():
            data = source.read(info)
            if info.filename == PROTOCOL:
                text, count = VERSION_LINE.subn(f'AGENT_VERSION = "{version}"', data.decode())
                assert count == 1, "AGENT_VERSION line not found"
                data = text.encode()
            elif info.filename == "__main__.py" and main is not None:
                data = main.encode()
            target.writestr(info, data)
    return out.getvalue()


def sha256_hex(data: bytes) -> str:
    """Hex sha256 of `data`."""
    return hashlib.sha256(data).hexdigest()
