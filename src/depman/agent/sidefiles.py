"""Names of a download's side files: short, whatever the length of the target's name.

``<name>.partial.json`` is 13 characters longer than ``<name>``, so a model
file named with 243 to 255 characters (the usual limit) could never be
downloaded. The partial and its sidecar are named after a hash of the target's
name instead: ``.dm-<16 hex>.partial`` and ``.dm-<16 hex>.partial.json``,
hidden, beside the target, and never listed by ComfyUI (not a model extension).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import logging
import os
from pathlib import Path

from .errors import LocalFileError

log = logging.getLogger("depman.agent")

PREFIX = ".dm-"
PARTIAL_SUFFIX = ".partial"
SIDECAR_SUFFIX = ".partial.json"
LEGACY_PARTIAL_SUFFIX = ".partial"
LEGACY_SIDECAR_SUFFIX = ".partial.json"


def _stem(dest: Path) -> str:
    return PREFIX + hashlib.sha256(dest.name.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def partial_path(dest: Path) -> Path:
    """Where the bytes of ``dest`` collect until they are verified."""
    return dest.with_name(_stem(dest) + PARTIAL_SUFFIX)


def sidecar_path(dest: Path) -> Path:
    """The resume record of ``dest``'s partial."""
    return dest.with_name(_stem(dest) + SIDECAR_SUFFIX)


def check_name_length(dest: Path) -> None:
    """Refuse, before any traffic, a target name longer than its filesystem allows."""
    limit = 255
    folder = dest.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    with contextlib.suppress(OSError, ValueError):
        limit = os.pathconf(folder, "PC_NAME_MAX")
    size = len(os.fsencode(dest.name))
    if size > limit:
        raise LocalFileError(f"File name too long: {size} bytes, the filesystem allows "
                             f"{limit} ({dest.name[:40]}...)")


def remove_write_leftovers(path: Path) -> int:
    """Delete temp files an atomic write of ``path`` left when the agent was killed mid-write.

    ``atomic_write_json`` writes ``<name>.<random>.tmp`` and renames it; a kill -9
    between the two leaves the temp file behind, one per kill, forever.
    """
    removed = 0
    pattern = str(path.parent / (glob.escape(path.name) + ".*.tmp"))
    for leftover in glob.glob(pattern):
        with contextlib.suppress(OSError):
            os.unlink(leftover)  # unlink never follows a link
            removed += 1
    return removed


def adopt_legacy(dest: Path) -> None:
    """Carry a partial left by an agent that named it ``<name>.partial`` over to the new name.

    The download then resumes it instead of fetching those bytes again. Temp files
    of sidecar writes cut short by a kill are removed.
    """
    remove_write_leftovers(sidecar_path(dest))
    pairs = ((dest.name + LEGACY_PARTIAL_SUFFIX, partial_path(dest)),
             (dest.name + LEGACY_SIDECAR_SUFFIX, sidecar_path(dest)))
    for legacy_name, new in pairs:
        try:
            legacy = dest.with_name(legacy_name)
        except ValueError:
            continue
        with contextlib.suppress(OSError):
            if os.path.islink(legacy):
                legacy.unlink()  # planted, not ours: never written or read through
            elif legacy.is_file() and not os.path.lexists(new):
                os.replace(legacy, new)
                log.info("Resuming %s from its partial under the old name", dest.name)
