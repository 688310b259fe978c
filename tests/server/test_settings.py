"""Every ServerSettings field is documented in docs/server.md; flags beat env beats defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from depman.errors import ConfigError
from depman.server.runner import build_settings
from depman.settings import ServerSettings

DOC = Path(__file__).resolve().parents[2] / "docs" / "server.md"


def env_name(name: str) -> str:
    """The environment variable of a setting."""
    alias = ServerSettings.model_fields[name].validation_alias
    return alias if isinstance(alias, str) else f"DEPMAN_{name.upper()}"


@pytest.mark.parametrize("name", sorted(ServerSettings.model_fields))
def test_setting_is_documented(name: str) -> None:
    text = DOC.read_text()
    assert f"`{name}`" in text, f"{name} is missing from docs/server.md"
    assert f"`{env_name(name)}`" in text, f"{env_name(name)} is missing from docs/server.md"
    assert ServerSettings.model_fields[name].description


def test_flag_beats_env_beats_default(monkeypatch: pytest.MonkeyPatch) -> None:
    assert build_settings().port == 8787
    monkeypatch.setenv("DEPMAN_PORT", "9000")
    monkeypatch.setenv("DEPMAN_DATABASE_URL", "sqlite:///env.db")
    assert build_settings().port == 9000
    settings = build_settings(port=9100, database_url=None)
    assert settings.port == 9100 and settings.database_url == "sqlite:///env.db"


def test_workers_need_postgresql() -> None:
    with pytest.raises(ConfigError, match="workers > 1 needs a PostgreSQL"):
        build_settings(workers=2, database_url="sqlite:///x.db")
    assert build_settings(workers=2, database_url="postgresql+psycopg://h/db").workers == 2


def test_public_url_must_be_http() -> None:
    with pytest.raises(ConfigError, match="public_url must be an http"):
        build_settings(public_url="depman.example.com")
    assert build_settings(public_url="https://depman.example.com").public_url
