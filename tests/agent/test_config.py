"""AgentConfig.from_env: defaults, overrides, and bad values that stop start-up."""

from __future__ import annotations

from pathlib import Path

import pytest

from depman.agent.config import AgentConfig, parse_byte_size
from depman.agent.errors import ConfigError

BASE = {"FCS_API_BASE_URL": "http://127.0.0.1:8787/api", "SERVER_TYPE": "furry-standard-v8"}


@pytest.mark.parametrize(("text", "expected"), [
    ("10GB", 10 * 1024**3), ("500MiB", 500 * 1024**2), ("2TiB", 2 * 1024**4),
    ("1.5 GB", int(1.5 * 1024**3)), ("1234", 1234), ("10gb", 10 * 1024**3), ("7K", 7 * 1024),
])
def test_byte_sizes(text: str, expected: int) -> None:
    assert parse_byte_size(text) == expected


def test_defaults_match_the_runbook() -> None:
    config = AgentConfig.from_env(BASE)
    assert config.workspace == Path("/workspace")
    assert config.comfyui_dir == Path("/workspace/ComfyUI")
    assert config.state_path == Path("/workspace/dependency_agent_state.json")
    assert config.poll_seconds == 5 and config.heartbeat_seconds == 30
    assert config.max_parallel_downloads == 1
    # The runbook's three, plus the storage host Civitai's downloads redirect to.
    assert config.allowed_domains[:3] == ("huggingface.co", "hf.co", "civitai.com")
    assert config.allowed_domains[3].startswith("civitai-delivery-worker-prod.")
    assert config.allowed_domains[3].endswith(".r2.cloudflarestorage.com")
    assert config.verbose_progress is False
    assert config.pin_ttl_seconds is None  # the profile's value, else 1800
    assert config.download_connections == 8
    assert config.update_retry_seconds == 60


def test_overrides() -> None:
    config = AgentConfig.from_env({
        **BASE, "WORKSPACE": "/data", "MAX_PARALLEL_DOWNLOADS": "9",
        "DM_DYNAMIC_MIN_FREE_BYTES": "10GB", "DM_DYNAMIC_MAX_BYTES": "50GB",
        "DM_DYNAMIC_EVICTION_ENABLED": "true", "DM_ALLOWED_DOMAINS": "a.com, B.org",
        "DM_VERBOSE_PROGRESS": "1", "DM_PIN_TTL_SECONDS": "0", "DM_DOWNLOAD_CONNECTIONS": "4"})
    assert config.comfyui_dir == Path("/data/ComfyUI")
    assert config.state_path == Path("/data/dependency_agent_state.json")
    assert config.max_parallel_downloads == 4  # clamped to 1..4
    assert config.dynamic_min_free_bytes == 10 * 1024**3
    assert config.dynamic_max_bytes == 50 * 1024**3
    assert config.dynamic_eviction_enabled is True
    assert config.allowed_domains == ("a.com", "b.org")
    assert config.pin_ttl_seconds == 0 and config.download_connections == 4


@pytest.mark.parametrize(("name", "value"), [
    ("DM_DYNAMIC_MIN_FREE_BYTES", "ten"), ("DM_DYNAMIC_MAX_BYTES", "5 parsecs"),
    ("DM_POLL_SECONDS", "soon"), ("DM_POLL_SECONDS", "0"), ("DM_HEARTBEAT_SECONDS", "-1"),
    ("MAX_PARALLEL_DOWNLOADS", "two"), ("DM_VERBOSE_PROGRESS", "maybe"),
    ("DM_DYNAMIC_EVICTION_ENABLED", "yesplease"), ("DM_EVICTION_BATCH_MAX", "0"),
    ("DM_PIN_TTL_SECONDS", "1h"), ("DM_DOWNLOAD_CONNECTIONS", "0"),
    ("DM_UPDATE_RETRY_SECONDS", "0"),
    ("FCS_API_BASE_URL", "http://127.0.0.1:8787/"), ("FCS_API_BASE_URL", "ftp://x/api"),
])
def test_bad_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        AgentConfig.from_env({**BASE, name: value})
    assert info.value.variable == name and name in str(info.value)


@pytest.mark.parametrize("missing", ["FCS_API_BASE_URL", "SERVER_TYPE"])
def test_required(missing: str) -> None:
    env = {k: v for k, v in BASE.items() if k != missing}
    with pytest.raises(ConfigError, match=missing):
        AgentConfig.from_env(env)


def test_every_env_var_is_documented() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "agent.md").read_text()
    source = (Path(__file__).resolve().parents[2] / "src/depman/agent/config.py").read_text()
    import re
    names = set(re.findall(r'"((?:DM|FCS|HF|CIVITAI|WORKSPACE|SERVER|MAX|DEPENDENCY)[A-Z_]*)"',
                           source))
    assert "DM_DYNAMIC_MIN_FREE_BYTES" in names
    missing = sorted(n for n in names if f"`{n}`" not in doc)
    assert not missing, f"undocumented in docs/agent.md: {missing}"


def test_redacted_hides_secrets() -> None:
    config = AgentConfig.from_env({**BASE, "HF_TOKEN": "hf_xyz",
                                   "DEPENDENCY_MANAGER_SHARED_SECRET": "sec-XYZ"})
    text = str(config.redacted())
    assert "hf_xyz" not in text and "sec-XYZ" not in text


@pytest.mark.parametrize(("env", "expected"), [
    ({"DM_INSTANCE_ID": "mine", "CONTAINER_ID": "123", "PUBLIC_IPADDR": "1.2.3.4"},
     ("mine", "DM_INSTANCE_ID", "1.2.3.4", "PUBLIC_IPADDR")),
    ({"CONTAINER_ID": "123", "VAST_CONTAINERLABEL": "C.999"},
     ("123", "CONTAINER_ID", None, None)),
    ({"VAST_CONTAINERLABEL": "C.999", "DM_INSTANCE_IP": "5.6.7.8", "PUBLIC_IPADDR": "1.1.1.1"},
     ("999", "VAST_CONTAINERLABEL", "5.6.7.8", "DM_INSTANCE_IP")),
    ({}, (None, None, None, None)),
])
def test_identity_from_own_settings_else_vast_environment(
        env: dict[str, str], expected: tuple[str | None, ...]) -> None:
    config = AgentConfig.from_env({**BASE, **env})
    assert (config.instance_id, config.instance_id_source, config.instance_ip,
            config.instance_ip_source) == expected


def test_api_url_credentials_never_reach_an_error_or_the_settings_line() -> None:
    url = "http://admin:hunter2-secret@127.0.0.1:8787/nope"
    with pytest.raises(ConfigError) as caught:
        AgentConfig.from_env({**BASE, "FCS_API_BASE_URL": url})
    assert "hunter2" not in str(caught.value) and "admin" not in str(caught.value)
    config = AgentConfig.from_env({**BASE, "FCS_API_BASE_URL": url.replace("/nope", "/api")})
    assert "hunter2" not in str(config.redacted())
