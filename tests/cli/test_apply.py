"""`depman apply` against a live server: the example fleet, bad files, refused tokens."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from depman.cli import app
from tests.cli.helpers import EXAMPLE, GIB, assert_clean_failure, run_cli, write_fleet
from tests.support.server import RunningServer

SDXL_TYPE = "sdxl-standard-v8"


def test_apply_example_fleet_creates_every_document(applied: RunningServer) -> None:
    status, dep = applied.admin("GET", "/admin/deps/sdxl-base-1.0")
    assert status == 200, dep
    # Resolved by the (loopback fake) Hub: pinned commit, hash and size filled in.
    assert dep["source"] == "hf://stabilityai/stable-diffusion-xl-base-1.0/sd_xl_base_1.0.safetensors"
    assert dep["destRelativePath"] == "models/checkpoints/sd_xl_base_1.0.safetensors"
    assert len(dep["sha256"]) == 64 and dep["expectedSizeBytes"] and dep["revision"]
    assert f"/resolve/{dep['revision']}/" in dep["url"]
    _, dep = applied.admin("GET", "/admin/deps/flux1-dev")
    assert dep["type"] == "diffusion_models" and dep["auth"] == "hf_token"
    _, dep = applied.admin("GET", "/admin/deps/juggernaut-xl-v9")
    assert dep["expectedSizeBytes"] == round(6.6 * GIB) and dep["source"] is None
    _, dep = applied.admin("GET", "/admin/deps/lora-detail-tweaker-xl")
    assert (dep["type"], dep["source"]) == ("loras", "civitai://135867")
    _, dep = applied.admin("GET", "/admin/deps/sdxl-base-diffusers")
    assert dep["destRelativePath"] == "models/diffusers/sdxl-base-unet" and dep["files"]
    _, profile = applied.admin("GET", "/admin/profiles/sdxl-core")
    assert profile["staticDepIds"] == ["sdxl-base-1.0", "sdxl-vae-fp16-fix"]
    assert profile["prefetchOnBoot"] is True
    assert profile["dynamicPolicy"]["minFreeBytes"] == 20 * GIB
    _, stype = applied.admin("GET", f"/admin/server-types/{SDXL_TYPE}")
    assert stype["modelManagement"] == {
        "mode": "dependency_manager_v1",
        "profileId": "sdxl-core",
        "enrollment": "open",
    }
    _, flux = applied.admin("GET", "/admin/server-types/flux-dev-v2")
    assert flux["modelManagement"]["enrollment"] == "declared"
    _, instance = applied.admin("GET", "/admin/instances/14620331")
    assert (instance["ip"], instance["serverType"]) == ("203.0.113.17", SDXL_TYPE)


def test_apply_again_changes_nothing_and_says_what_it_did(applied: RunningServer) -> None:
    _, before = applied.admin("GET", "/admin/deps")
    result = run_cli(applied, "apply", "-f", str(EXAMPLE))
    assert result.exit_code == 0, result.output
    assert "10 deps, 2 profiles, 2 server types, 3 instances." in result.stdout
    assert f"to {applied.root_url}" in result.stdout
    _, after = applied.admin("GET", "/admin/deps")
    strip = [{k: v for k, v in d.items() if k != "updatedAt"} for d in before["deps"]]
    assert strip == [{k: v for k, v in d.items() if k != "updatedAt"} for d in after["deps"]]


def test_server_flag_accepts_the_agents_api_url(applied: RunningServer) -> None:
    result = CliRunner().invoke(
        app,
        ["apply", "-f", str(EXAMPLE), "--server", applied.base_url + "/"],
        env={"DEPMAN_ADMIN_TOKEN": applied.admin_token},
    )
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    ("fleet", "message"),
    [
        (
            """\
            deps:
              a:
                url: https://hf.co/a
                destRelativePath: models/checkpoints/a.bin
                kind: static
                shaa256: "0000"
            """,
            "fleet.yaml:6: deps.a.shaa256: unknown key 'shaa256' (did you mean 'sha256'?)",
        ),
        (
            """\
            deps:
              a: {url: https://hf.co/a, destRelativePath: models/vae/a, kind: static, sha256: xyz}
            """,
            "fleet.yaml:2: deps.a.sha256: not a sha256 (64 hex digits): 'xyz'",
        ),
        (
            """\
            deps:
              a: {url: https://hf.co/a, destRelativePath: models/../../etc/a.bin, kind: static}
            """,
            "fleet.yaml:2: deps.a.destRelativePath: must not contain '..'",
        ),
        ("deps: [\n", "fleet.yaml:2: not valid YAML"),
    ],
    ids=["bad-key", "bad-sha", "dotdot-path", "bad-yaml"],
)
def test_bad_fleet_file_is_a_clear_error(
    server: RunningServer, tmp_path: Path, fleet: str, message: str
) -> None:
    path = write_fleet(tmp_path, fleet)
    result = run_cli(server, "apply", "-f", str(path))
    assert_clean_failure(result, message.replace("fleet.yaml", str(path)))
    status, _ = server.admin("GET", "/admin/deps/a")
    assert status == 404


def test_missing_file_is_a_usage_error(server: RunningServer, tmp_path: Path) -> None:
    result = run_cli(server, "apply", "-f", str(tmp_path / "nope.yaml"))
    assert result.exit_code == 2
    assert "does not exist" in result.output


def test_reference_to_a_document_nowhere_is_an_error(
    server: RunningServer, tmp_path: Path
) -> None:
    path = write_fleet(tmp_path, "instances:\n  i-1: {ip: 10.0.0.1, serverType: ghost}\n")
    result = run_cli(server, "apply", "-f", str(path))
    assert_clean_failure(
        result,
        f"{path}:2: instances.i-1.serverType: server type 'ghost' is neither in this file "
        "nor on the server",
    )


def test_reference_to_a_document_on_the_server_is_fine(
    applied: RunningServer, tmp_path: Path
) -> None:
    path = write_fleet(
        tmp_path,
        f"""\
        profiles:
          extra: {{staticDepIds: [clip-l], prefetchOnBoot: false}}
        instances:
          vast-9: {{ip: 10.0.0.9, serverType: {SDXL_TYPE}}}
        """,
    )
    result = run_cli(applied, "apply", "-f", str(path))
    assert result.exit_code == 0, result.output
    assert "0 deps, 1 profile, 0 server types, 1 instance." in result.stdout
    status, instance = applied.admin("GET", "/admin/instances/vast-9")
    assert status == 200 and instance["serverType"] == SDXL_TYPE


def test_server_rejection_names_the_line_and_applies_nothing(
    server: RunningServer, tmp_path: Path
) -> None:
    # Which modes exist is the server's business: the client passes `mode` through.
    path = write_fleet(
        tmp_path,
        """\
        deps:
          a: {url: https://hf.co/a, destRelativePath: models/checkpoints/a.bin, kind: static}
        serverTypes:
          t: {modelManagement: {mode: ""}}
        """,
    )
    result = run_cli(server, "apply", "-f", str(path))
    assert_clean_failure(
        result,
        f"{path}:4: serverTypes.t: modelManagement.mode must be a non-empty string",
        "422 validation_failed",
        "nothing was applied",
    )
    status, _ = server.admin("GET", "/admin/deps/a")
    assert status == 404


def test_wrong_token_is_refused_without_showing_it(applied: RunningServer) -> None:
    wrong = "adm-not-the-right-one"
    for args in (("get", "instances"), ("apply", "-f", str(EXAMPLE)), ("jobs", "get", "x")):
        result = run_cli(applied, *args, token=wrong)
        assert_clean_failure(result, "401", "DEPMAN_ADMIN_TOKEN")
        assert wrong not in result.output
        assert applied.admin_token not in result.output


def test_missing_token(server: RunningServer) -> None:
    result = CliRunner().invoke(
        app, ["get", "deps", "--server", server.root_url], env={"DEPMAN_ADMIN_TOKEN": ""}
    )
    assert_clean_failure(result, "no admin token: set DEPMAN_ADMIN_TOKEN")


def test_unreachable_server() -> None:
    result = CliRunner().invoke(
        app, ["get", "deps", "--server", "http://127.0.0.1:9", "--token", "t"]
    )
    assert_clean_failure(result, "cannot reach the depman server at http://127.0.0.1:9")


def test_bad_file_in_a_real_process_has_no_traceback(
    server: RunningServer, tmp_path: Path
) -> None:
    path = write_fleet(
        tmp_path, "deps:\n  a: {url: https://hf.co/a, destRelativePath: ../a, kind: x}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEPMAN_", "DM_"))}
    env["DEPMAN_ADMIN_TOKEN"] = server.admin_token
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "depman",
            "apply",
            "-f",
            str(path),
            "--server",
            server.root_url,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "2 problems" in proc.stderr
    assert "deps.a.destRelativePath" in proc.stderr and "deps.a.kind" in proc.stderr
    assert server.admin_token not in proc.stdout + proc.stderr


def test_sources_in_a_fleet_file_get_dep_and_the_sha256_warning(
    applied: RunningServer, tmp_path: Path
) -> None:
    _, dep = applied.admin("GET", "/admin/deps/lora-pixel-art-xl")
    assert dep["sources"] == ["https://models.example.com/loras/pixel-art-xl.safetensors"]
    shown = run_cli(applied, "get", "dep", "lora-pixel-art-xl")
    assert shown.exit_code == 0, shown.output
    assert "hf://nerijs/pixel-art-xl/pixel-art-xl.safetensors" in shown.stdout
    assert "https://models.example.com/loras/pixel-art-xl.safetensors" in shown.stdout
    listed = run_cli(applied, "get", "deps")
    assert "+ models.example.com/…/pixel-art-xl.safetensors" in listed.stdout

    fleet = write_fleet(
        tmp_path,
        """
        deps:
          unpinned-lora:
            url: https://models.example.com/loras/unpinned.safetensors
            type: loras
            filename: unpinned.safetensors
            kind: dynamic
        """,
    )
    result = run_cli(applied, "apply", "-f", str(fleet))
    assert result.exit_code == 0, result.output
    assert "warning: deps.unpinned-lora: no sha256" in " ".join(result.stdout.split())

    bad = write_fleet(
        tmp_path,
        """
        deps:
          wrong-source:
            url: hf://nerijs/pixel-art-xl/pixel-art-xl.safetensors
            type: loras
            kind: dynamic
            sources: [hf://nerijs/pixel-art-xl/another.safetensors]
        """,
    )
    refused = run_cli(applied, "apply", "-f", str(bad))
    assert refused.exit_code != 0
    assert "serves other bytes" in refused.output and "nothing was applied" in refused.output
    assert applied.admin("GET", "/admin/deps/wrong-source")[0] == 404
