"""Civitai: `civitai://MODEL_VERSION_ID[/FILE_NAME]` -> one file of a model version.

`GET /api/v1/model-versions/{id}` lists the version's files, each with `name`,
`sizeKB`, `hashes.SHA256`, `downloadUrl`, `type` and `primary`. Without a file
name the primary file is taken (or the only model file); a version with several
model files and no primary one must name the file. The model's type (LORA,
Checkpoint, ...) gives the ComfyUI folder when the entry does not say it.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote

import httpx

from depman.errors import SourceUnavailable, ValidationFailed
from depman.sources.answers import CivitaiFileAnswer, CivitaiVersionAnswer, parse_answer

# Civitai model types -> ComfyUI folder keys.
MODEL_TYPE_FOLDERS = {
    "Checkpoint": "checkpoints",
    "LORA": "loras",
    "LoCon": "loras",
    "DoRA": "loras",
    "TextualInversion": "embeddings",
    "Hypernetwork": "hypernetworks",
    "VAE": "vae",
    "Controlnet": "controlnet",
    "Upscaler": "upscale_models",
    "MotionModule": "animatediff_models",
}
MODEL_FILE_TYPES = ("Model", "Pruned Model")


@dataclass(frozen=True)
class CivitaiFile:
    """The chosen file of a model version."""

    version_id: str
    name: str
    url: str
    sha256: str
    size_bytes: int
    model_type: str | None


def parse(url: str) -> tuple[str, str | None]:
    """(version id, file name or None)."""
    rest = url[len("civitai://") :]
    version, _, name = rest.partition("/")
    if not version.isdigit() or len(version) > 18 or any(ord(c) < 32 for c in name):
        raise ValidationFailed(
            f"not a civitai:// source: {url!r} (use civitai://MODEL_VERSION_ID[/FILE_NAME])"
        )
    return version, unquote(name) or None


def _choose(files: list[CivitaiFileAnswer], name: str | None, version: str) -> CivitaiFileAnswer:
    names = [str(f.name) for f in files]
    if name is not None:
        for f in files:
            if f.name == name:
                return f
        raise ValidationFailed(
            f"Civitai model version {version} has no file {name!r} (it has: {', '.join(names)})"
        )
    primary = [f for f in files if f.primary]
    if len(primary) == 1:
        return primary[0]
    models = [f for f in files if f.type in MODEL_FILE_TYPES]
    if len(models) == 1:
        return models[0]
    if len(files) == 1:
        return files[0]
    raise ValidationFailed(
        f"Civitai model version {version} has several files; name one as "
        f"civitai://{version}/FILE_NAME (it has: {', '.join(names)})"
    )


def resolve(http: httpx.Client, endpoint: str, token: str | None, url: str) -> CivitaiFile:
    """The file `url` names, with its sha256, size and download URL."""
    version, name = parse(url)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    what = f"Civitai model version {version}"
    try:
        response = http.get(
            f"{endpoint.rstrip('/')}/api/v1/model-versions/{version}", headers=headers
        )
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise SourceUnavailable(
            f"the depman server could not reach Civitai at {endpoint.rstrip('/')} for {what}: "
            f"{exc} (the server, not the CLI, resolves civitai:// sources: let it reach that "
            "host, or point DEPMAN_CIVITAI_ENDPOINT on the server elsewhere)"
        ) from exc
    if response.status_code == 404:
        raise ValidationFailed(f"{what} does not exist")
    if response.status_code in (401, 403):
        raise ValidationFailed(f"Civitai refused {what}: it needs DEPMAN_CIVITAI_TOKEN")
    if response.status_code >= 400:
        raise SourceUnavailable(f"Civitai answered {response.status_code} for {what}")
    try:
        body = response.json()
    except ValueError as exc:
        raise SourceUnavailable(f"Civitai answered no JSON for {what}") from exc
    answer: CivitaiVersionAnswer = parse_answer(
        CivitaiVersionAnswer, body, who="Civitai", what=what
    )
    if not answer.files:
        raise ValidationFailed(f"{what} has no files")
    chosen = _choose(answer.files, name, version)
    sha = chosen.hashes.sha256 if chosen.hashes is not None else None
    size_kb, download = chosen.size_kb, chosen.download_url
    if sha is None or size_kb is None or not download:
        raise SourceUnavailable(f"{what}: file {chosen.name!r} lacks a hash, size or URL")
    model_type = answer.model.type if answer.model is not None else None
    return CivitaiFile(
        version_id=version,
        name=str(chosen.name),
        url=download,
        sha256=sha.removeprefix("sha256:").lower(),
        # sizeKB is the byte count / 1024 as a float: exact for any real file size.
        size_bytes=round(size_kb * 1024),
        model_type=MODEL_TYPE_FOLDERS.get(str(model_type)),
    )
