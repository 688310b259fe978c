"""Model roots: the sections of ComfyUI's ``extra_model_paths.yaml``.

ComfyUI reads models from its own ``models/`` folder and from every section of
``extra_model_paths.yaml`` (a shared volume, an A1111 install)::

    shared:
        base_path: /mnt/models
        is_default: true
        checkpoints: checkpoints
        loras: |
            loras
            lycoris
        text_encoders: clip

A catalog entry (or its profile) may name a section (``root: shared``): the file
``models/<folder>/<name>`` then goes to the section's first path for that folder,
``/mnt/models/loras/<name>``. The agent is standard library only, so the small YAML
subset these files use is parsed here: top-level keys, ``key: value`` pairs under
them, block scalars (``|``) holding one path per line, comments, quotes. Anything
else in a section is ignored with a warning rather than stopping the agent.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from .errors import ConfigError, UnsafePath

log = logging.getLogger("depman.agent")

FILE_NAME = "extra_model_paths.yaml"
# ComfyUI's legacy folder names (its map_legacy), and the folders it scans per key.
LEGACY_KEYS = {"clip": "text_encoders", "unet": "diffusion_models"}
FOLDER_KEYS = {"clip": "text_encoders", "unet": "diffusion_models", "t2i_adapter": "controlnet"}
_KEY_RE = re.compile(r"^([A-Za-z0-9_.\-]+)\s*:\s*(.*)$")


@dataclass
class ModelRoot:
    """One section: its base path and the folders it lists per model type."""

    name: str
    base_path: Path
    folders: dict[str, list[Path]] = field(default_factory=dict)
    is_default: bool = False

    def folder_for(self, model_type: str) -> Path | None:
        """Where files of ``model_type`` go in this root (its first listed folder)."""
        key = LEGACY_KEYS.get(model_type, model_type)
        for candidate in (key, *[k for k, v in LEGACY_KEYS.items() if v == key]):
            paths = self.folders.get(candidate)
            if paths:
                return paths[0]
        return None


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def _strip_comment(line: str) -> str:
    # A '#' starts a comment at the line start or after whitespace (not inside a path).
    match = re.search(r"(^|\s)#", line)
    return line[: match.start()] if match else line


def parse_sections(text: str) -> dict[str, dict[str, list[str]]]:
    """{section: {key: [values]}}; a block scalar gives one value per non-empty line."""
    sections: dict[str, dict[str, list[str]]] = {}
    section: dict[str, list[str]] | None = None
    block: list[str] | None = None
    block_indent: int | None = None
    key_indent = 0
    for raw in text.replace("\t", "    ").splitlines():
        if block is not None:
            indent = len(raw) - len(raw.lstrip())
            if not raw.strip():
                continue
            if block_indent is None and indent > key_indent:
                block_indent = indent
            if block_indent is not None and indent >= block_indent:
                block.append(raw.strip())
                continue
            block, block_indent = None, None
        line = _strip_comment(raw).rstrip()
        if not line.strip() or line.strip() == "---":
            continue
        indent = len(line) - len(line.lstrip())
        match = _KEY_RE.match(line.strip())
        if match is None:
            log.warning("%s: ignoring a line it cannot read: %r", FILE_NAME, raw.strip())
            continue
        key, value = match.group(1), match.group(2).strip()
        if indent == 0:
            section = sections.setdefault(_unquote(key), {})
            continue
        if section is None:
            continue
        if value in ("|", "|-", "|+", ">", ">-"):
            block, block_indent, key_indent = [], None, indent
            section[key] = block
        else:
            section[key] = [_unquote(value)] if value else []
    return sections


def _resolve(base: Path, value: str) -> Path:
    path = Path(os.path.expandvars(os.path.expanduser(value)))
    return path if path.is_absolute() else base / path


def parse_roots(text: str, yaml_dir: Path) -> dict[str, ModelRoot]:
    """The roots of an extra_model_paths.yaml whose folder is ``yaml_dir``."""
    roots: dict[str, ModelRoot] = {}
    for name, entries in parse_sections(text).items():
        base_values = entries.get("base_path") or []
        base = _resolve(yaml_dir, base_values[0]) if base_values else yaml_dir
        root = ModelRoot(name=name, base_path=base)
        for key, values in entries.items():
            if key == "base_path":
                continue
            if key == "is_default":
                root.is_default = bool(values) and values[0].lower() in ("true", "yes", "on")
                continue
            root.folders[key] = [_resolve(base, v) for v in values if v]
        roots[name] = root
    return roots


class ModelRoots:
    """The roots this node knows; ``locate`` maps a catalog path into one of them."""

    def __init__(self, roots: dict[str, ModelRoot] | None = None, source: Path | None = None):
        self.roots = roots or {}
        self.source = source

    @classmethod
    def load(cls, explicit: Path | None, comfyui_dir: Path) -> ModelRoots:
        """From ``DM_EXTRA_MODEL_PATHS`` (must be readable) or the ComfyUI folder's file."""
        path = explicit or comfyui_dir / FILE_NAME
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            if explicit is not None:
                raise ConfigError("DM_EXTRA_MODEL_PATHS", f"{path} does not exist") from None
            return cls()
        except (OSError, UnicodeDecodeError) as exc:
            if explicit is not None:
                raise ConfigError("DM_EXTRA_MODEL_PATHS", f"cannot read {path}: {exc}") from exc
            log.warning("Cannot read %s (%s); model roots are unavailable", path, exc)
            return cls()
        roots = parse_roots(text, path.parent)
        log.info("Model roots from %s: %s", path, ", ".join(sorted(roots)) or "(none)")
        return cls(roots, path)

    def names(self) -> list[str]:
        return sorted(self.roots)

    def has_folder(self, root_name: str, rel: str) -> bool:
        """Whether ``root_name`` exists and lists a folder for the type of ``rel``."""
        root = self.roots.get(root_name)
        parts = rel.split("/")
        if root is None or len(parts) < 3 or parts[0] != "models":
            return False
        return root.folder_for(FOLDER_KEYS.get(parts[1], parts[1])) is not None

    def locate(self, rel: PurePosixPath, root_name: str) -> tuple[Path, Path]:
        """(the file's path, the root folder it must stay inside) for ``models/<folder>/...``."""
        root = self.roots.get(root_name)
        if root is None:
            where = f" in {self.source}" if self.source else " (no extra_model_paths.yaml)"
            known = ", ".join(self.names()) or "none"
            raise UnsafePath(f"Unknown model root {root_name!r}{where}; known roots: {known}")
        parts = rel.parts
        if len(parts) < 3 or parts[0] != "models":
            raise UnsafePath(f"A model root needs a models/<folder>/<file> path, got {rel}")
        model_type = FOLDER_KEYS.get(parts[1], parts[1])
        folder = root.folder_for(model_type)
        if folder is None:
            raise UnsafePath(
                f"Model root {root_name!r} lists no folder for {model_type!r} "
                f"(add `{model_type}:` under `{root_name}:` in {self.source or FILE_NAME})"
            )
        return folder.joinpath(*parts[2:]), folder

