"""Resolve the `hf://` and `civitai://` sources of a catalog entry (`core.catalog.DepSpec`)."""

from __future__ import annotations

from dataclasses import replace

import httpx

from depman.core.catalog import MAX_FOLDER_FILES, DepSpec, FileSpec, is_source_url
from depman.core.dep_sources import SourceSpec
from depman.errors import ValidationFailed
from depman.settings import ServerSettings
from depman.sources import civitai, hf


def _agree(given: str | None, found: str, what: str) -> str:
    if given is not None and given.lower() != found:
        raise ValidationFailed(f"sha256 {given!r} of {what} differs from the source's {found}")
    return found


class SourceResolver:
    """Callable `DepSpec -> DepSpec` for `core.catalog.put_dep`, one HTTP client per call."""

    def __init__(
        self,
        *,
        hf_endpoint: str,
        civitai_endpoint: str,
        hf_token: str | None = None,
        civitai_token: str | None = None,
        timeout_seconds: float = 30.0,
    ) -> None:
        self.hf_endpoint = hf_endpoint
        self.civitai_endpoint = civitai_endpoint
        self.hf_token = hf_token
        self.civitai_token = civitai_token
        self.timeout = timeout_seconds

    @classmethod
    def from_settings(cls, settings: ServerSettings) -> SourceResolver:
        """Built from the server's settings (endpoints and tokens)."""
        return cls(
            hf_endpoint=settings.hf_endpoint,
            civitai_endpoint=settings.civitai_endpoint,
            hf_token=settings.hf_token.get_secret_value() if settings.hf_token else None,
            civitai_token=(
                settings.civitai_token.get_secret_value() if settings.civitai_token else None
            ),
            timeout_seconds=settings.source_timeout_seconds,
        )

    def __call__(self, spec: DepSpec) -> DepSpec:
        with httpx.Client(timeout=self.timeout, follow_redirects=False) as http:
            if is_source_url(spec.url):
                spec = self._entry(http, spec)
            if spec.files is not None:
                if len(spec.files) > MAX_FOLDER_FILES:  # before one request per file
                    raise ValidationFailed(f"files lists more than {MAX_FOLDER_FILES} files")
                spec = replace(spec, files=tuple(self._file(http, f) for f in spec.files))
            if spec.sources:
                found = tuple(self._source(http, s, i) for i, s in enumerate(spec.sources))
                spec = replace(spec, sources=found)
        return spec

    def _entry(self, http: httpx.Client, spec: DepSpec) -> DepSpec:
        if spec.url.startswith("civitai://"):
            found = civitai.resolve(http, self.civitai_endpoint, self.civitai_token, spec.url)
            return replace(
                spec,
                url=found.url,
                source=spec.url,
                revision=found.version_id,
                sha256=_agree(spec.sha256, found.sha256, spec.url),
                expected_size_bytes=found.size_bytes,
                model_type=spec.model_type or found.model_type,
                filename=spec.filename or (found.name if not spec.dest_relative_path else None),
            )
        source = hf.parse(spec.url)
        client = hf.HfClient(http, self.hf_endpoint, self.hf_token)
        default_name = source.path.rstrip("/").rsplit("/", 1)[-1] or source.repo.split("/")[1]
        filename = spec.filename or (default_name if not spec.dest_relative_path else None)
        if source.is_folder:
            if spec.files is not None:
                raise ValidationFailed("give an hf:// folder url or files, not both")
            files, commit = hf.resolve_folder(client, source, max_files=MAX_FOLDER_FILES)
            return replace(
                spec,
                url="",
                source=spec.url,
                revision=commit,
                filename=filename,
                files=tuple(
                    FileSpec(path=f.path, url=f.url, sha256=f.sha256, size_bytes=f.size_bytes)
                    for f in files
                ),
            )
        hf_file, commit = hf.resolve_file(client, source)
        return replace(
            spec,
            url=hf_file.url,
            source=spec.url,
            revision=commit,
            sha256=_agree(spec.sha256, hf_file.sha256, spec.url),
            expected_size_bytes=hf_file.size_bytes,
            filename=filename,
        )

    def _file(self, http: httpx.Client, f: FileSpec) -> FileSpec:
        if not is_source_url(f.url):
            return f
        if f.url.startswith("civitai://"):
            found = civitai.resolve(http, self.civitai_endpoint, self.civitai_token, f.url)
            return replace(
                f,
                url=found.url,
                source=f.url,
                revision=found.version_id,
                sha256=_agree(f.sha256, found.sha256, f.url),
                size_bytes=found.size_bytes,
            )
        source = hf.parse(f.url)
        if source.is_folder:
            raise ValidationFailed(f"files[].url must name one file, not a folder: {f.url!r}")
        client = hf.HfClient(http, self.hf_endpoint, self.hf_token)
        resolved, commit = hf.resolve_file(client, source)
        return replace(
            f,
            url=resolved.url,
            source=f.url,
            revision=commit,
            sha256=_agree(f.sha256, resolved.sha256, f.url),
            size_bytes=resolved.size_bytes,
        )

    def _source(self, http: httpx.Client, s: SourceSpec, index: int) -> SourceSpec:
        """A further source: its download URL and what it serves (checked against the
        entry by `core.catalog.validate_dep`)."""
        if not is_source_url(s.url):
            return s
        if s.url.startswith("hf://") and hf.parse(s.url).is_folder:
            raise ValidationFailed(f"sources[{index}] must name one file, not a folder: {s.url!r}")
        found = self._file(http, FileSpec(path="", url=s.url))
        return SourceSpec(
            url=found.url,
            source=s.url,
            revision=found.revision,
            sha256=found.sha256,
            size_bytes=found.size_bytes,
        )
