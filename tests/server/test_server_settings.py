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


@pytest.mark.parametrize(
    ("name", "value"),
    [("git_timeout", 0), ("git_timeout", -5.0), ("git_connect_timeout", 0),
     ("git_low_speed_time", -1), ("git_low_speed_limit", -1), ("reconcile_wait", -1.0)],
)  # fmt: skip
def test_git_network_limits_must_be_usable(tmp_path: Path, name: str, value: float) -> None:
    with pytest.raises(ServerSetupError, match=name) as caught:
        Settings.from_mapping({"data_dir": tmp_path, name: value})
    assert caught.value.hint
    limits = Settings.from_mapping(
        {"data_dir": tmp_path, "git_timeout": 20, "git_low_speed_limit": 0, "reconcile_wait": 0}
    )
    assert (limits.git_timeout, limits.git_low_speed_limit) == (20.0, 0)
