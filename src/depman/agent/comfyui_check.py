"""Does ComfyUI see it? After an install, ask a reachable ComfyUI to list the file.

ComfyUI answers ``GET /models/{folder}`` with the file names (relative to the
folder, subfolders with '/') its loaders offer. A file installed where ComfyUI
does not look (a root missing from its extra_model_paths.yaml, a folder a custom
node registers but is not installed) is on disk yet useless to a workflow: the
item still succeeds, with a warning the operator sees on the item.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from urllib.parse import quote

log = logging.getLogger("depman.agent")

TIMEOUT_SECONDS = 5.0
# Folder names on disk -> the keys ComfyUI registers (its map_legacy and shared folders).
FOLDER_KEYS = {"clip": "text_encoders", "unet": "diffusion_models", "t2i_adapter": "controlnet"}


def folder_and_name(rel: str) -> tuple[str, str] | None:
    """(ComfyUI folder key, name as ComfyUI lists it) of ``models/<folder>/<name>``."""
    parts = rel.split("/")
    if len(parts) < 3 or parts[0] != "models":
        return None
    return FOLDER_KEYS.get(parts[1], parts[1]), "/".join(parts[2:])


def listing_warning(comfyui_url: str, rel: str) -> str | None:
    """None when ComfyUI lists the file (or cannot be asked); else the warning text."""
    found = folder_and_name(rel)
    if found is None:
        return None
    folder, name = found
    url = f"{comfyui_url}/models/{quote(folder)}"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as response:
            names = json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return f"ComfyUI at {comfyui_url} has no model folder {folder!r}; it will not see {rel}"
        log.warning("ComfyUI check of %s skipped: %s answered %d", rel, url, exc.code)
        return None
    except (OSError, ValueError) as exc:
        log.warning("ComfyUI check of %s skipped: %s: %s", rel, url, exc)
        return None
    if not isinstance(names, list):
        return None
    if name in names or name.replace("/", "\\") in names:
        return None
    return f"ComfyUI at {comfyui_url} does not list {name} in {folder} (installed at {rel})"
