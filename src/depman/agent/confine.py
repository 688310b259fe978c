"""Confinement: model files live inside the ComfyUI folder by their real path.

``destRelativePath`` is checked lexically (no absolute path, no ``..``), but a symlink
inside the ComfyUI folder can still lead out of it: a linked ``models/loras`` folder, or
a ``<dest>.partial`` link planted before a download. Every path the agent writes, adopts
or deletes is therefore checked by the real path of its folder (symlinks resolved), and
the file itself is handled without following a link (lstat, O_NOFOLLOW, unlink of the
entry). The ComfyUI folder may itself be a symlink (``/workspace/ComfyUI`` → a volume):
its real path is the root.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import UnsafePath


def is_inside(real: str, root_real: str) -> bool:
    return real == root_real or real.startswith(root_real.rstrip(os.sep) + os.sep)


class Confinement:
    """Checks paths against the real path of ``root``; ``memo`` spares repeated realpaths."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def root_real(self) -> str:
        # Resolved per use: the folder may be created, or re-linked, while the agent runs.
        return os.path.realpath(self.root)

    def check(self, path: Path, rel: str, memo: dict[str, bool] | None = None, *,
              folder: str | None = None) -> Path:
        """``path`` unchanged when its folder's real path is inside the root; else UnsafePath."""
        folder = folder if folder is not None else str(path.parent)
        inside = memo.get(folder) if memo is not None else None
        if inside is None:
            inside = is_inside(os.path.realpath(folder), self.root_real())
            if memo is not None:
                memo[folder] = inside
        if not inside:
            raise UnsafePath(f"Refusing destRelativePath {rel}: its folder resolves to "
                             f"{os.path.realpath(folder)}, outside the ComfyUI folder "
                             f"{self.root_real()} (a symlink leads out of it)")
        return path
