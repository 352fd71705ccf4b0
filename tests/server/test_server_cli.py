"""`kernex server init|migrate|run` through Typer's CliRunner."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from kit.fleet import FleetRepo
from kit.server import migration_head
from typer.testing import CliRunner

from kernex_cli.main import app
from kernex_server.settings import Settings
from kernex_server.tokens import hash_token

runner = CliRunner()


def test_init_makes_key_settings_and_a_token_shown_once(tmp_path: Path) -> None:
    data = tmp_path / "data"
    result = runner.invoke(
        app, ["server", "init", "--data-dir", str(data), "--repo", "/srv/fleet", "--json"]
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    token = out["admin_token"]
    assert token.startswith("kx_")
    key = data / "keys" / "manifest.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in key.read_bytes()
    settings = Settings.load(data, {})
    assert settings.repo == "/srv/fleet"
    assert len(out["webhook_secret"]) >= 43  # 32 random bytes
    assert settings.webhook_secret == out["webhook_secret"]
    assert stat.S_IMODE((data / "server.toml").stat().st_mode) == 0o600
    assert settings.branch == "main"
    db = (data / "kernex.db").read_bytes()
    assert token.encode() not in db  # only the hash is stored
    assert hash_token(token).encode() in db

    again = runner.invoke(app, ["server", "init", "--data-dir", str(data), "--json"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.output)["admin_token"] is None
    assert json.loads(again.output)["webhook_secret"] is None  # kept, not shown again
    assert Settings.load(data, {}).webhook_secret == out["webhook_secret"]
    assert json.loads(again.output)["manifest_key_id"] == out["manifest_key_id"]


def test_migrate_and_refusals(tmp_path: Path) -> None:
    data = tmp_path / "data"
    missing = runner.invoke(app, ["server", "run", "--data-dir", str(data)])
    assert missing.exit_code == 1
    assert "no settings file" in missing.output
    assert "kernex server init" in missing.output
    assert runner.invoke(app, ["server", "init", "--data-dir", str(data)]).exit_code == 0
    migrated = runner.invoke(app, ["server", "migrate", "--data-dir", str(data)])
    assert migrated.exit_code == 0, migrated.output
    assert f"revision {migration_head()}" in migrated.output
    (data / "keys" / "manifest.key").unlink()
    no_key = runner.invoke(app, ["server", "run", "--data-dir", str(data)])
    assert no_key.exit_code == 1
    assert "no manifest key" in no_key.output
    (data / "server.toml").write_text("pol_interval = 3\n")
    typo = runner.invoke(app, ["server", "migrate", "--data-dir", str(data)])
    assert typo.exit_code == 1
    assert "unknown setting(s): pol_interval" in typo.output


def test_init_adds_a_webhook_secret_to_an_older_data_dir(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert runner.invoke(app, ["server", "init", "--data-dir", str(data)]).exit_code == 0
    toml = data / "server.toml"
    toml.write_text("".join(x for x in toml.read_text().splitlines(True) if "webhook" not in x))
    assert Settings.load(data, {}).webhook_secret == ""
    again = runner.invoke(app, ["server", "init", "--data-dir", str(data)])
    assert again.exit_code == 0, again.output
    secret = Settings.load(data, {}).webhook_secret
    assert secret
    assert secret in again.output
    assert "webhook secret" in again.output


def test_init_refuses_a_data_dir_inside_the_fleet_repository(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`kernex server init --repo .` run in the fleet repository would put the manifest
    key, the database and server.toml (with the webhook secret) in its work tree, one
    `git add -A` away from a commit."""
    repo = FleetRepo(tmp_path / "fleet")
    monkeypatch.chdir(repo.path)
    monkeypatch.delenv("KERNEX_DATA_DIR", raising=False)
    refused = runner.invoke(app, ["server", "init", "--repo", "."])
    assert refused.exit_code == 1, refused.output
    assert "inside the fleet repository's work tree" in refused.output
    assert "--data-dir" in refused.output
    assert not (repo.path / "kernex-data").exists()
    nested = runner.invoke(app, ["server", "init", "--repo", ".", "--data-dir", "ops/server"])
    assert nested.exit_code == 1, nested.output
    assert not (repo.path / "ops").exists()
    assert repo.git("status", "--porcelain") == ""
    outside = runner.invoke(app, ["server", "init", "--repo", ".", "--data-dir", "../server"])
    assert outside.exit_code == 0, outside.output
    assert (tmp_path / "server" / "keys" / "manifest.key").is_file()
