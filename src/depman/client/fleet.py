"""Fleet files: one YAML document declaring deps, profiles, server types and instances.

The sections and field names are those of the admin documents
(protocol v1, "Admin documents"), camelCase, so a fleet
described for the original backend moves over unchanged. Validation happens
before anything is sent: every problem is reported at once, each naming the
file, the line and the key.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from depman.client.errors import FleetFileError
from depman.client.units import parse_byte_size

# The server's rule: ids travel in URL paths and in `<depId>.<gen>` item ids.
ID_RE = re.compile(r"^[^/\\\s\x00-\x1f\x7f]{1,200}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
# Apply order: each document only names documents applied before it.
SECTIONS = ("deps", "profiles", "serverTypes", "instances")

Loc = tuple[str | int, ...]


def _check_id(value: str) -> str:
    if not ID_RE.match(value):
        raise ValueError(
            f"bad id {value!r}: use 1-200 characters, no '/', '\\', whitespace or controls"
        )
    return value


def _check_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme in ("hf", "civitai") and (parts.netloc or parts.path):
        return value  # resolved by the server when the entry is put
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s), hf:// or civitai:// URL: {value!r}")
    return value


def _check_name(value: str) -> str:
    # A file name inside a model folder: subfolders allowed, nothing that climbs out.
    if not value or "\0" in value or value.startswith("/"):
        raise ValueError(f"must be a relative file name, got {value!r}")
    if any(part in ("", ".", "..") for part in value.replace("\\", "/").split("/")):
        raise ValueError(f"must not contain '..', '.' or empty parts: {value!r}")
    return value


def _check_relative_path(value: str) -> str:
    # The agent refuses these too, but only after the item is queued on every instance.
    if not value or value.endswith("/"):
        raise ValueError(f"must name a file relative to the ComfyUI folder, got {value!r}")
    if "\\" in value or "\0" in value:
        raise ValueError(f"use forward slashes only: {value!r}")
    if value.startswith(("/", "~")) or re.match(r"^[A-Za-z]:", value):
        raise ValueError(f"must be relative to the ComfyUI folder, not absolute: {value!r}")
    if ".." in value.split("/"):
        raise ValueError(f"must not contain '..' (it would escape the ComfyUI folder): {value!r}")
    if any(part in ("", ".") for part in value.split("/")):
        raise ValueError(f"must not contain empty or '.' parts: {value!r}")
    return value


def _check_sha256(value: str) -> str:
    digest = value.strip().lower()
    if not SHA256_RE.match(digest):
        raise ValueError(f"not a sha256 (64 hex digits): {value!r}")
    return digest


def _check_ip(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError(f"not an IP address: {value!r}") from None


def _to_byte_size(value: Any) -> Any:
    return parse_byte_size(value) if isinstance(value, int | str) else value


Id = Annotated[str, AfterValidator(_check_id)]
ByteSize = Annotated[int, BeforeValidator(_to_byte_size), Field(ge=0)]
PositiveByteSize = Annotated[int, BeforeValidator(_to_byte_size), Field(gt=0)]


class FleetDoc(BaseModel):
    """Base of the fleet documents: camelCase keys, unknown keys refused."""

    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, frozen=True)

    def to_body(self) -> dict[str, Any]:
        """The admin API body of this document."""
        return self.model_dump(by_alias=True, exclude_none=True)


class FileDoc(FleetDoc):
    """One file of a folder model."""

    path: Annotated[str, AfterValidator(_check_name)]
    url: Annotated[str, AfterValidator(_check_url)]
    sha256: Annotated[str, AfterValidator(_check_sha256)] | None = None
    size_bytes: PositiveByteSize | None = None


class DepDoc(FleetDoc):
    """A catalog entry: `deps/{depId}`.

    Where it goes: `type` (a ComfyUI model folder) + `filename`, or a v1
    `destRelativePath`. What it is: `url` (http(s), `hf://`, `civitai://`), or
    `files` for a folder model. The server checks the type and folder rules.
    """

    model_config = ConfigDict(
        extra="forbid", alias_generator=to_camel, frozen=True, populate_by_name=True
    )

    url: Annotated[str, AfterValidator(_check_url)] | None = None
    auth: Literal["none", "hf_token", "civitai_token"] = "none"
    dest_relative_path: Annotated[str, AfterValidator(_check_relative_path)] | None = None
    model_type: str | None = Field(None, alias="type")
    filename: Annotated[str, AfterValidator(_check_name)] | None = None
    root: str | None = None
    files: list[FileDoc] | None = None
    # Further URLs for the same bytes (http(s), hf://, civitai://), tried in order after url.
    sources: list[Annotated[str, AfterValidator(_check_url)]] | None = None
    sha256: Annotated[str, AfterValidator(_check_sha256)] | None = None
    expected_size_bytes: PositiveByteSize | None = None
    kind: Literal["static", "dynamic"]

    @model_validator(mode="after")
    def _check_shape(self) -> DepDoc:
        if self.url is None and self.files is None:
            raise ValueError("give url (a file) or files (a folder model)")
        # civitai:// knows the type and file name; hf:// the file name.
        url = self.url or ""
        if (
            self.dest_relative_path is None
            and self.model_type is None
            and not url.startswith("civitai://")
        ):
            raise ValueError("give type and filename, or destRelativePath")
        if (
            self.model_type is not None
            and self.filename is None
            and self.files is not None
        ):
            raise ValueError("type needs filename (the folder's name in that model folder)")
        # Otherwise a missing filename is the url's last segment (the server derives it).
        return self


class DynamicPolicy(FleetDoc):
    """A profile's dynamic cache policy; unset fields keep the agent's defaults."""

    enabled: bool | None = None
    min_free_bytes: ByteSize | None = None
    max_dynamic_bytes: ByteSize | None = None
    eviction_batch_max: Annotated[int, Field(ge=1)] | None = None
    pin_ttl_seconds: Annotated[int, Field(ge=0)] | None = None


class ProfileDoc(FleetDoc):
    """A dependency profile: `profiles/{profileId}`."""

    static_dep_ids: list[Id] = Field(default_factory=list)
    prefetch_on_boot: bool = False
    dynamic_policy: DynamicPolicy = Field(default_factory=DynamicPolicy)
    root: str | None = None


class ModelManagement(FleetDoc):
    """How a server type's models are managed."""

    mode: str = "dependency_manager_v1"
    profile_id: Id | None = None
    # open (the server's default): undeclared agents of this type enrol themselves;
    # declared: only `instances` register.
    enrollment: Literal["open", "declared"] | None = None


class ServerTypeDoc(FleetDoc):
    """A ComfyUI server type: `server-types/{serverType}`."""

    model_management: ModelManagement = Field(default_factory=ModelManagement)
    max_active_jobs: Annotated[int, Field(ge=1)] | None = None


class InstanceDoc(FleetDoc):
    """A GPU instance: `instances/{instanceId}`."""

    ip: Annotated[str, AfterValidator(_check_ip)] | None = None
    server_type: Id


@dataclass(frozen=True)
class Reference:
    """A document naming another one that the file does not declare."""

    section: str
    target_id: str
    loc: Loc


class Fleet(FleetDoc):
    """A whole fleet file."""

    version: Literal[1] = 1
    deps: dict[Id, DepDoc] = Field(default_factory=dict)
    profiles: dict[Id, ProfileDoc] = Field(default_factory=dict)
    server_types: dict[Id, ServerTypeDoc] = Field(default_factory=dict)
    instances: dict[Id, InstanceDoc] = Field(default_factory=dict)

    @field_validator("deps", "profiles", "server_types", "instances", mode="before")
    @classmethod
    def _numeric_ids(cls, value: Any) -> Any:
        # Vast.ai instance ids are numbers, and YAML reads `14620331:` as an int key.
        if isinstance(value, dict):
            return {
                str(k) if isinstance(k, int) and not isinstance(k, bool) else k: v
                for k, v in value.items()
            }
        return value

    def to_body(self) -> dict[str, Any]:
        """The body of `POST /api/admin/fleet`."""
        return {
            section: {doc_id: doc.to_body() for doc_id, doc in docs.items()}
            for section, docs in self._sections()
        }

    def documents(self) -> Iterator[tuple[str, str, FleetDoc]]:
        """(section, id, document) in apply order: deps, profiles, server types, instances."""
        for section, docs in self._sections():
            for doc_id, doc in docs.items():
                yield section, doc_id, doc

    def count(self) -> int:
        """How many documents the file declares."""
        return sum(len(docs) for _, docs in self._sections())

    def references(self) -> tuple[list[Reference], list[tuple[Loc, str]]]:
        """References to documents not in this file, and problems among the ones that are."""
        external: list[Reference] = []
        problems: list[tuple[Loc, str]] = []
        for profile_id, profile in self.profiles.items():
            seen: set[str] = set()
            for i, dep_id in enumerate(profile.static_dep_ids):
                loc: Loc = ("profiles", profile_id, "staticDepIds", i)
                dep = self.deps.get(dep_id)
                if dep_id in seen:
                    problems.append((loc, f"dep {dep_id!r} is listed twice"))
                elif dep is None:
                    external.append(Reference("deps", dep_id, loc))
                elif dep.kind != "static":
                    problems.append(
                        (loc, f"dep {dep_id!r} has kind {dep.kind!r}; static deps need kind static")
                    )
                seen.add(dep_id)
        for server_type, doc in self.server_types.items():
            profile_ref = doc.model_management.profile_id
            if profile_ref is not None and profile_ref not in self.profiles:
                loc = ("serverTypes", server_type, "modelManagement", "profileId")
                external.append(Reference("profiles", profile_ref, loc))
        for instance_id, instance in self.instances.items():
            if instance.server_type not in self.server_types:
                loc = ("instances", instance_id, "serverType")
                external.append(Reference("serverTypes", instance.server_type, loc))
        return external, problems

    def _sections(self) -> list[tuple[str, dict[str, Any]]]:
        return [
            ("deps", self.deps),
            ("profiles", self.profiles),
            ("serverTypes", self.server_types),
            ("instances", self.instances),
        ]


@dataclass(frozen=True)
class FleetFile:
    """A validated fleet and where it came from (to point at lines in later errors)."""

    path: Path
    fleet: Fleet
    root: yaml.Node

    def describe(self, loc: Loc) -> str:
        """`fleet.yaml:12: profiles.sdxl.staticDepIds[1]` for a location in this file."""
        return f"{self.path}:{line_of(self.root, loc)}: {format_loc(loc)}"


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys: the second `sdxl-base:` would silently win."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                first = seen[key].start_mark.line + 1
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (first at line {first})",
                    key_node.start_mark,
                )
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


def load_fleet(path: Path) -> FleetFile:
    """Read and validate a fleet file; raises FleetFileError listing every problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise FleetFileError(str(path), [f"cannot read: {exc}"]) from exc
    return parse_fleet(text, path)


def parse_fleet(text: str, path: Path) -> FleetFile:
    """Validate fleet YAML `text`; `path` is only used in messages."""
    loader = _StrictLoader(text)
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except yaml.YAMLError as exc:
        raise FleetFileError(str(path), [_yaml_problem(path, exc)]) from exc
    finally:
        loader.dispose()
    if root is None or data is None:
        raise FleetFileError(str(path), [f"{path}: the file is empty"])
    if not isinstance(data, dict):
        raise FleetFileError(
            str(path), [f"{path}:1: expected a mapping with the keys {', '.join(SECTIONS)}"]
        )
    try:
        fleet = Fleet.model_validate(data)
    except ValidationError as exc:
        problems = [_validation_problem(path, root, err) for err in exc.errors()]
        raise FleetFileError(str(path), problems) from exc
    fleet_file = FleetFile(path, fleet, root)
    _, reference_problems = fleet.references()
    if reference_problems:
        raise FleetFileError(
            str(path), [f"{fleet_file.describe(loc)}: {m}" for loc, m in reference_problems]
        )
    if fleet.count() == 0:
        raise FleetFileError(str(path), [f"{path}: declares no {', '.join(SECTIONS)}"])
    return fleet_file


def line_of(root: yaml.Node, loc: Loc) -> int:
    """The 1-based line of the deepest node of `loc` that exists in the YAML tree."""
    node, line = root, root.start_mark.line + 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next(
                (
                    (k, v)
                    for k, v in node.value
                    if isinstance(k, yaml.ScalarNode) and k.value == part
                ),
                None,
            )
            if match is None:
                break
            line = match[0].start_mark.line + 1
            node = match[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                break
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def format_loc(loc: Loc) -> str:
    """`profiles.sdxl.staticDepIds[1]`."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part != "[key]":
            text += f".{part}" if text else part
    return text or "(top level)"


def _known_keys() -> list[str]:
    models: list[type[BaseModel]] = [
        Fleet,
        DepDoc,
        FileDoc,
        DynamicPolicy,
        ProfileDoc,
        ModelManagement,
        ServerTypeDoc,
        InstanceDoc,
    ]
    return sorted({f.alias or name for m in models for name, f in m.model_fields.items()})


def _validation_problem(path: Path, root: yaml.Node, err: Any) -> str:
    loc: Loc = tuple(err["loc"])
    kind = err["type"]
    where = f"{path}:{line_of(root, loc)}: {format_loc(loc)}"
    if kind == "extra_forbidden":
        key = str(loc[-1])
        close = difflib.get_close_matches(key, _known_keys(), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"{where}: unknown key {key!r}{hint}"
    if kind == "missing":
        return f"{where}: required key {loc[-1]!r} is missing"
    if kind == "value_error":
        return f"{where}: {err['ctx']['error']}"
    if "[key]" in loc:
        return f"{where}: bad id: {err['msg']}"
    return f"{where}: {err['msg']} (got {err.get('input')!r})"


def _yaml_problem(path: Path, exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    line = f":{mark.line + 1}" if mark is not None else ""
    problem = getattr(exc, "problem", None) or str(exc)
    return f"{path}{line}: not valid YAML: {problem}"
