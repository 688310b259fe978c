"""ComfyUI model types: which folders under `models/` ComfyUI scans, and for what.

A catalog entry may name its ComfyUI folder key (`type`) and a `filename`; the
destination is then `models/<type>/<filename>`. A path under `models/` whose
first folder ComfyUI never scans is refused, naming the closest folder: a
`models/lora/x.safetensors` (a typo of `loras`) used to be accepted and landed
where ComfyUI never looks.

The keys and folders are those ComfyUI's `folder_paths.py` registers (2026):
a key maps to every folder of `models/` it scans, its own name first (the
folder depman installs into). `clip` and `unet` are ComfyUI's legacy names of
`text_encoders` and `diffusion_models` and are accepted as aliases.
"""

from __future__ import annotations

import difflib

from depman.errors import ValidationFailed

# key -> the folders under models/ ComfyUI scans for it; the first is where depman writes.
COMFYUI_FOLDERS: dict[str, tuple[str, ...]] = {
    "checkpoints": ("checkpoints",),
    "configs": ("configs",),
    "loras": ("loras",),
    "vae": ("vae",),
    "text_encoders": ("text_encoders", "clip"),
    "diffusion_models": ("diffusion_models", "unet"),
    "clip_vision": ("clip_vision",),
    "style_models": ("style_models",),
    "embeddings": ("embeddings",),
    "diffusers": ("diffusers",),
    "vae_approx": ("vae_approx",),
    "controlnet": ("controlnet", "t2i_adapter"),
    "gligen": ("gligen",),
    "upscale_models": ("upscale_models",),
    "latent_upscale_models": ("latent_upscale_models",),
    "hypernetworks": ("hypernetworks",),
    "photomaker": ("photomaker",),
    "classifiers": ("classifiers",),
    "model_patches": ("model_patches",),
    "audio_encoders": ("audio_encoders",),
    "background_removal": ("background_removal",),
    "frame_interpolation": ("frame_interpolation",),
    "geometry_estimation": ("geometry_estimation",),
    "optical_flow": ("optical_flow",),
    "detection": ("detection",),
}
# ComfyUI's `map_legacy`: old names still accepted by every loader.
ALIASES: dict[str, str] = {"clip": "text_encoders", "unet": "diffusion_models"}
# Folders that widely used custom node packs register under models/ (they scan
# them once installed); accepted so a fleet using them needs no opt-in.
CUSTOM_NODE_FOLDERS: dict[str, tuple[str, ...]] = {
    "ipadapter": ("ipadapter",),
    "insightface": ("insightface",),
    "instantid": ("instantid",),
    "animatediff_models": ("animatediff_models",),
    "animatediff_motion_lora": ("animatediff_motion_lora",),
    "facerestore_models": ("facerestore_models",),
    "ultralytics": ("ultralytics",),
    "sams": ("sams",),
    "sam2": ("sam2",),
    "grounding-dino": ("grounding-dino",),
    "LLM": ("LLM",),
    "onnx": ("onnx",),
    "pulid": ("pulid",),
    "reactor": ("reactor",),
    "depthanything": ("depthanything",),
}
# Types whose entries are folders of files (a diffusers model), not one file.
FOLDER_TYPES = frozenset({"diffusers"})
MODELS_DIR = "models"


def known_types() -> dict[str, tuple[str, ...]]:
    """Every accepted type key with the folders it scans."""
    return {**COMFYUI_FOLDERS, **CUSTOM_NODE_FOLDERS}


def _folder_to_type() -> dict[str, str]:
    return {folder: key for key, folders in known_types().items() for folder in folders}


FOLDER_TO_TYPE = _folder_to_type()


def closest(name: str, choices: list[str]) -> str | None:
    """The most similar of `choices` (difflib), or None."""
    found = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    if found:
        return found[0]
    lowered = {c.lower(): c for c in choices}
    return lowered.get(name.lower())


def canonical_type(value: str) -> str:
    """The folder key for `value` (aliases mapped); ValidationFailed naming the closest key."""
    key = ALIASES.get(value, value)
    if key in known_types():
        return key
    near = closest(value, [*known_types(), *ALIASES])
    hint = f" (did you mean {near!r}?)" if near else ""
    raise ValidationFailed(f"type {value!r} is not a ComfyUI model folder{hint}")


def type_of_folder(folder: str) -> str | None:
    """The type key whose models ComfyUI reads from `models/<folder>/`, if any."""
    return FOLDER_TO_TYPE.get(folder)


def dest_for(model_type: str, filename: str) -> str:
    """`models/<type>/<filename>` for a canonical type."""
    return f"{MODELS_DIR}/{known_types()[model_type][0]}/{filename}"


def split_models_path(path: str) -> tuple[str, str] | None:
    """(type, filename) of a `models/<folder>/<filename>` path ComfyUI scans, else None."""
    parts = path.split("/")
    if len(parts) < 3 or parts[0] != MODELS_DIR:
        return None
    model_type = type_of_folder(parts[1])
    return (model_type, "/".join(parts[2:])) if model_type else None


def check_models_path(path: str) -> None:
    """Refuse a path under `models/` that ComfyUI would never find."""
    parts = path.split("/")
    if parts[0] != MODELS_DIR:
        return
    if len(parts) < 3:
        raise ValidationFailed(
            f"destRelativePath {path!r} must name a file inside a model folder "
            "(models/<folder>/<file>)"
        )
    folder = parts[1]
    if type_of_folder(folder) is not None:
        return
    near = closest(folder, list(FOLDER_TO_TYPE))
    hint = f"; did you mean models/{near}/?" if near else ""
    raise ValidationFailed(
        f"destRelativePath {path!r}: ComfyUI does not scan models/{folder}/{hint}"
    )
