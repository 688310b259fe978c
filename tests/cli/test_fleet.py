"""Fleet files: parsing, the admin bodies they become, and errors that name file, line and key."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from depman.client.errors import FleetFileError
from depman.client.fleet import load_fleet, parse_fleet

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "fleet.example.yaml"
SHA = "a" * 64
MINIMAL = f"""\
deps:
  sdxl-base:
    url: https://huggingface.co/org/repo/resolve/main/base.safetensors
    destRelativePath: models/checkpoints/base.safetensors
    sha256: {SHA.upper()}
    expectedSizeBytes: 6.5GiB
    kind: static
  lora-a:
    url: https://civitai.com/api/download/models/1
    auth: civitai_token
    destRelativePath: models/loras/a.safetensors
    expectedSizeBytes: 150MB
    kind: dynamic
profiles:
  core:
    staticDepIds: [sdxl-base]
    prefetchOnBoot: true
    dynamicPolicy: {{enabled: true, minFreeBytes: 10GB, maxDynamicBytes: 1073741824}}
serverTypes:
  sdxl:
    modelManagement: {{mode: dependency_manager_v1, profileId: core}}
    maxActiveJobs: 2
instances:
  i-1: {{ip: 203.0.113.5, serverType: sdxl}}
"""


def problems_of(text: str) -> list[str]:
    with pytest.raises(FleetFileError) as info:
        parse_fleet(textwrap.dedent(text), Path("fleet.yaml"))
    return info.value.problems


def test_minimal_fleet_becomes_admin_documents() -> None:
    body = parse_fleet(MINIMAL, Path("fleet.yaml")).fleet.to_body()
    assert body == {
        "deps": {
            "sdxl-base": {
                "url": "https://huggingface.co/org/repo/resolve/main/base.safetensors",
                "auth": "none",
                "destRelativePath": "models/checkpoints/base.safetensors",
                "sha256": SHA,
                "expectedSizeBytes": int(6.5 * 1024**3),
                "kind": "static",
            },
            "lora-a": {
                "url": "https://civitai.com/api/download/models/1",
                "auth": "civitai_token",
                "destRelativePath": "models/loras/a.safetensors",
                "expectedSizeBytes": 150 * 1024**2,
                "kind": "dynamic",
            },
        },
        "profiles": {
            "core": {
                "staticDepIds": ["sdxl-base"],
                "prefetchOnBoot": True,
                "dynamicPolicy": {
                    "enabled": True,
                    "minFreeBytes": 10 * 1024**3,
                    "maxDynamicBytes": 1024**3,
                },
            }
        },
        "serverTypes": {
            "sdxl": {
                "modelManagement": {"mode": "dependency_manager_v1", "profileId": "core"},
                "maxActiveJobs": 2,
            }
        },
        "instances": {"i-1": {"ip": "203.0.113.5", "serverType": "sdxl"}},
    }


def test_documents_come_in_dependency_order() -> None:
    fleet = parse_fleet(MINIMAL, Path("fleet.yaml")).fleet
    sections = [section for section, _, _ in fleet.documents()]
    assert sections == ["deps", "deps", "profiles", "serverTypes", "instances"]


def test_example_fleet_is_valid_and_self_contained() -> None:
    fleet_file = load_fleet(EXAMPLE)
    fleet = fleet_file.fleet
    assert len(fleet.server_types) == 2
    assert len(fleet.instances) >= 2
    assert {d.auth for d in fleet.deps.values()} >= {"hf_token", "civitai_token"}
    assert any(d.sha256 for d in fleet.deps.values())
    external, problems = fleet.references()
    assert external == [] and problems == []


def test_unknown_key_names_file_line_and_suggests() -> None:
    [problem] = problems_of(
        """\
        deps:
          x:
            url: https://hf.co/a
            destRelativePath: models/a.bin
            sha265: abc
            kind: dynamic
        """
    )
    assert problem == "fleet.yaml:5: deps.x.sha265: unknown key 'sha265' (did you mean 'sha256'?)"


def test_unknown_section_is_reported() -> None:
    [problem] = problems_of("deps: {}\nserver_types: {}\n")
    assert (
        "fleet.yaml:2: server_types: unknown key 'server_types' (did you mean 'serverTypes'?)"
        in problem
    )


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("sha256", "abc123", "not a sha256 (64 hex digits)"),
        ("sha256", "g" * 64, "not a sha256"),
        ("destRelativePath", "../etc/passwd", "must not contain '..'"),
        ("destRelativePath", "models/../../x.bin", "must not contain '..'"),
        ("destRelativePath", "/workspace/models/x.bin", "not absolute"),
        ("destRelativePath", "models\\\\x.bin", "forward slashes"),
        ("destRelativePath", "models/loras/", "must name a file"),
        ("destRelativePath", "models/./x.bin", "empty or '.' parts"),
        ("destRelativePath", "models//x.bin", "empty or '.' parts"),
        ("expectedSizeBytes", "0", "greater than 0"),
        ("url", "ftp://hf.co/x", "not an http(s), hf:// or civitai:// URL"),
        ("expectedSizeBytes", "lots", "not a byte size"),
        ("expectedSizeBytes", "-5", "not a byte size"),
        ("auth", "bearer", "'none', 'hf_token' or 'civitai_token'"),
        ("kind", "warm", "'static' or 'dynamic'"),
    ],
)
def test_bad_dep_fields_are_named(field: str, value: str, message: str) -> None:
    doc = {
        "url": "https://hf.co/a",
        "destRelativePath": "models/a.bin",
        "kind": "dynamic",
        field: value,
    }
    lines = "\n".join(f'    {k}: "{v}"' for k, v in doc.items())
    [problem] = problems_of(f"deps:\n  x:\n{lines}\n")
    assert problem.startswith(f"fleet.yaml:{3 + list(doc).index(field)}: deps.x.{field}: ")
    assert message in problem


def test_missing_required_key_and_bad_id() -> None:
    problems = problems_of(
        """\
        deps:
          "has space":
            url: https://hf.co/a
            destRelativePath: a.bin
            kind: static
          ok:
            url: https://hf.co/a
            destRelativePath: b.bin
        """
    )
    assert "fleet.yaml:2: deps.has space: bad id 'has space'" in problems[0]
    assert problems[1] == "fleet.yaml:6: deps.ok.kind: required key 'kind' is missing"


def test_every_problem_is_reported_at_once() -> None:
    problems = problems_of(
        """\
        deps:
          a: {url: nope, destRelativePath: ../a, kind: static}
        instances:
          i: {ip: 999.1.1.1, serverType: t}
        """
    )
    assert len(problems) == 3
    assert "instances.i.ip: not an IP address: '999.1.1.1'" in problems[2]


def test_profile_static_deps_must_be_static_and_unique() -> None:
    problems = problems_of(
        """\
        deps:
          d: {url: https://hf.co/d, destRelativePath: d.bin, kind: dynamic}
        profiles:
          p:
            staticDepIds: [d, d]
        """
    )
    assert problems == [
        "fleet.yaml:5: profiles.p.staticDepIds[0]: dep 'd' has kind 'dynamic'; "
        "static deps need kind static",
        "fleet.yaml:5: profiles.p.staticDepIds[1]: dep 'd' is listed twice",
    ]


def test_references_outside_the_file_are_left_for_the_server_check() -> None:
    fleet_file = parse_fleet(
        "instances:\n  i: {serverType: elsewhere}\nprofiles:\n  p: {staticDepIds: [remote]}\n",
        Path("fleet.yaml"),
    )
    external, problems = fleet_file.fleet.references()
    assert problems == []
    assert [(r.section, r.target_id) for r in external] == [
        ("deps", "remote"),
        ("serverTypes", "elsewhere"),
    ]
    assert fleet_file.describe(external[1].loc) == "fleet.yaml:2: instances.i.serverType"


def test_duplicate_keys_are_refused() -> None:
    [problem] = problems_of(
        """\
        deps:
          a: {url: https://hf.co/a, destRelativePath: a.bin, kind: static}
          a: {url: https://hf.co/b, destRelativePath: b.bin, kind: static}
        """
    )
    assert problem == "fleet.yaml:3: not valid YAML: duplicate key 'a' (first at line 2)"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the file is empty"),
        ("# only a comment\n", "the file is empty"),
        ("- a\n- b\n", "expected a mapping"),
        ("deps: {}\n", "declares no deps"),
        ("deps:\n  a: [\n", "not valid YAML"),
        ("version: 2\n", "version"),
    ],
)
def test_unusable_files(text: str, message: str) -> None:
    assert message in "\n".join(problems_of(text))


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(FleetFileError, match="cannot read"):
        load_fleet(tmp_path / "missing.yaml")


def test_error_message_lists_problems_under_the_file() -> None:
    with pytest.raises(FleetFileError) as info:
        parse_fleet("deps:\n  a: {url: x, destRelativePath: a, kind: static}\n", Path("f.yaml"))
    assert info.value.message.splitlines()[0] == "f.yaml: 1 problem:"
    assert info.value.code == "invalid_fleet_file"


def test_numeric_instance_ids_as_vast_gives_them_are_read_as_ids() -> None:
    text = """
    version: 1
    instances:
      14620331:
        serverType: sdxl
    """
    fleet = parse_fleet(textwrap.dedent(text), Path("fleet.yaml")).fleet
    assert fleet.to_body()["instances"] == {"14620331": {"serverType": "sdxl"}}
