"""Settings: typed, defaults with units, injectable as a dict, environment at the edge."""

from __future__ import annotations

from pathlib import Path

import pytest

from kernex_server.errors import ServerSetupError
from kernex_server.settings import Settings, data_dir_from, render_settings_file


def test_defaults_and_conversion(tmp_path: Path) -> None:
    settings = Settings.from_mapping({"data_dir": tmp_path, "poll_interval": 5})
    assert settings.poll_interval == 5.0
    assert settings.manifest_ttl == 7 * 24 * 3600
    assert settings.offline_after == 300
    assert settings.effective_database_url() == f"sqlite:///{tmp_path / 'kernex.db'}"
    with pytest.raises(ServerSetupError, match="must be int"):
        Settings.from_mapping({"data_dir": tmp_path, "manifest_ttl": "7d"})
    with pytest.raises(ServerSetupError, match="must be int"):
        Settings.from_mapping({"data_dir": tmp_path, "offline_after": True})
    with pytest.raises(ServerSetupError, match="unknown setting"):
        Settings.from_mapping({"data_dir": tmp_path, "secret_key": "x"})


def test_file_and_environment(tmp_path: Path) -> None:
    (tmp_path / "server.toml").write_text(render_settings_file("/srv/fleet", "prod"))
    plain = Settings.load(tmp_path, {})
    assert (plain.repo, plain.branch, plain.database_url) == ("/srv/fleet", "prod", "")
    url = "postgresql+psycopg://kernex@db/kernex"
    assert Settings.load(tmp_path, {"KERNEX_DATABASE_URL": url}).database_url == url
    (tmp_path / "server.toml").write_text("repo = [broken\n")
    with pytest.raises(ServerSetupError, match="cannot read"):
        Settings.load(tmp_path, {})


def test_data_dir_resolution(tmp_path: Path) -> None:
    assert data_dir_from(str(tmp_path), {}) == tmp_path
    assert data_dir_from(None, {"KERNEX_DATA_DIR": str(tmp_path)}) == tmp_path
    assert data_dir_from(None, {}).name == "kernex-data"
