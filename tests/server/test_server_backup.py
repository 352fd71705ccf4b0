"""Backup and restore: the archive, its checks, the database methods, and serials that
never go backwards for a device after a restore (SQLite and PostgreSQL)."""

from __future__ import annotations

import io
import json
import secrets
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from kit.admin import admin
from kit.apicheck import check_answers
from kit.device import SimDevice, verify_manifest
from kit.fleet import BUNDLE_V1, FleetRepo, kernex_yaml, sha
from starlette.testclient import TestClient

from kernex_core import keys
from kernex_server.app import create_app
from kernex_server.backup import MANIFEST, create_backup, restore_backup
from kernex_server.dbdump import BackupError
from kernex_server.serials import DEFAULT_SERIAL_JUMP
from kernex_server.settings import Settings
from kernex_server.setup import init_data_dir


def init(data_dir: Path, repo: FleetRepo, database: dict[str, str]) -> tuple[Settings, str]:
    env = {"KERNEX_DATABASE_URL": database["database_url"]}
    if database.get("database_schema"):
        data_dir.mkdir(parents=True)
        (data_dir / "server.toml").write_text(
            f'repo = "{repo.path}"\ndatabase_schema = "{database["database_schema"]}"\n'
            'webhook_secret = "s3cret"\npoll_interval = 3600.0\n'
        )
    result = init_data_dir(data_dir, repo=str(repo.path), branch="main", env=env)
    assert result.admin_token is not None
    return Settings.load(data_dir, env), result.admin_token


@pytest.fixture
def target_database(
    database: dict[str, str], tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[dict[str, str]]:
    """Where the restore goes: a new SQLite file, or a new PostgreSQL database."""
    if "database_schema" not in database:
        yield {"database_url": f"sqlite:///{tmp_path / 'restored' / 'kernex.db'}"}
        return
    base = sa.engine.make_url(database["database_url"])
    name = f"kx_restore_{secrets.token_hex(4)}"
    admin_engine = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin_engine.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    try:
        yield {"database_url": base.set(database=name).render_as_string(hide_password=False)}
    finally:
        with admin_engine.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE {name} WITH (FORCE)"))
        admin_engine.dispose()


def serve(settings: Settings) -> TestClient:
    client = TestClient(create_app(settings, background=False))
    check_answers(client)
    client.__enter__()
    return client


@pytest.mark.parametrize("method", ["auto", "logical"])
def test_restore_resumes_serials_above_what_devices_saw(
    tmp_path: Path,
    fleet_repo: FleetRepo,
    database: dict[str, str],
    target_database: dict[str, str],
    method: str,
) -> None:
    settings, token = init(tmp_path / "data", fleet_repo, database)
    device = SimDevice("dev-1", labels={"ring": "stable"})
    first = serve(settings)
    try:
        put = first.put(f"/v1/admin/bundles/{sha(BUNDLE_V1)}", content=BUNDLE_V1,
                        headers=admin(token))  # fmt: skip
        assert put.status_code in (200, 201), put.text
        device.enroll(first, token=first.post("/v1/admin/enrollment-tokens",
                      json={}, headers=admin(token)).json()["token"])  # fmt: skip
        first.post("/v1/admin/reconcile", headers=admin(token))
        raw = device.manifest(first).content
        assert verify_manifest(raw, "dev-1", load_key(settings)).serial == 1
        assert device.status(first, {"phase": "healthy", "serial": 1}).status_code == 204

        archive = tmp_path / "backups" / "kernex.tar.gz"
        manifest = create_backup(settings, archive, bundles=True, method=method)
        assert archive.stat().st_mode & 0o777 == 0o600

        # After the backup the device moves on: it accepts serial 2.
        fleet_repo.write("kernex.yaml", kernex_yaml(greeting="after the backup"))
        head = fleet_repo.commit("after the backup")
        first.post("/v1/admin/reconcile", headers=admin(token))
        seen = verify_manifest(device.manifest(first).content, "dev-1", load_key(settings))
        assert seen.serial == 2
    finally:
        first.__exit__(None, None, None)

    native = "sqlite" if "database_schema" not in database else "pg_dump"
    if native == "pg_dump" and not shutil.which("pg_dump"):
        native = "logical"  # auto falls back to the logical export
    expected_method = "logical" if method == "logical" else native
    assert manifest["database"]["method"] == expected_method
    assert manifest["bundles"] == {"included": True, "count": 1, "bytes": len(BUNDLE_V1)}
    with tarfile.open(archive) as tar:
        assert tar.getnames()[0] == MANIFEST

    env = {"KERNEX_DATABASE_URL": target_database["database_url"]}
    result = restore_backup(archive, tmp_path / "restored", env=env)
    assert result.serial_floor == 1 + DEFAULT_SERIAL_JUMP  # the backup's highest was 1
    restored = Settings.load(tmp_path / "restored", env)
    assert (restored.blob_dir / "sha256" / sha(BUNDLE_V1)[:2] / sha(BUNDLE_V1)).is_file()
    assert restored.manifest_key_path.stat().st_mode & 0o777 == 0o600

    second = serve(restored)  # its first reconcile deploys the head again
    try:
        raw = device.manifest(second).content  # same device key: no re-enrollment
        served = verify_manifest(raw, "dev-1", load_key(restored), min_serial=seen.serial)
        assert served.serial > seen.serial
        assert served.revision == head
        shown = second.get("/v1/admin/devices/dev-1", headers=admin(token)).json()
        assert shown["state"] == "accepted"
        assert shown["desired_serial"] == served.serial
        bundle = device.get(second, f"/v1/bundles/{sha(BUNDLE_V1)}")
        assert bundle.status_code == 200
        assert bundle.content == BUNDLE_V1
    finally:
        second.__exit__(None, None, None)


def load_key(settings: Settings) -> keys.PrivateKey:
    return keys.load_private_key_pem(settings.manifest_key_path.read_bytes())


def test_restore_refuses_a_non_empty_data_dir_and_checks_checksums(
    tmp_path: Path, fleet_repo: FleetRepo
) -> None:
    settings, _ = init(tmp_path / "data", fleet_repo, {"database_url": ""})
    archive = tmp_path / "kernex.tar.gz"
    create_backup(settings, archive)
    with pytest.raises(BackupError, match="is not empty") as refused:
        restore_backup(archive, settings.data_dir)
    assert "--force" in (refused.value.hint or "")

    # --force overwrites; the floor rises above the replaced database's serials too
    floor = restore_backup(archive, settings.data_dir, force=True).serial_floor
    assert floor == DEFAULT_SERIAL_JUMP
    again = restore_backup(archive, settings.data_dir, force=True).serial_floor
    assert again == floor + DEFAULT_SERIAL_JUMP

    tampered = tmp_path / "tampered.tar.gz"
    with tarfile.open(archive) as src, tarfile.open(tampered, "w:gz") as dst:
        for member in src:
            data = src.extractfile(member)
            body = data.read() if data is not None else b""
            if member.name == "server.toml":
                body += b"# changed\n"
                member.size = len(body)
            dst.addfile(member, io.BytesIO(body))
    with pytest.raises(BackupError, match=r"server\.toml in the backup does not match"):
        restore_backup(tampered, tmp_path / "elsewhere")

    (tmp_path / "junk.tar.gz").write_bytes(b"not a tar")
    with pytest.raises(BackupError, match="cannot read"):
        restore_backup(tmp_path / "junk.tar.gz", tmp_path / "elsewhere2")


def test_backup_manifest_lists_checksums(tmp_path: Path, fleet_repo: FleetRepo) -> None:
    settings, _ = init(tmp_path / "data", fleet_repo, {"database_url": ""})
    manifest = create_backup(settings, tmp_path / "b.tar.gz")
    assert set(manifest["files"]) == {"server.toml", "keys/manifest.key", "database/kernex.db"}
    assert manifest["database"]["kind"] == "sqlite"
    assert manifest["database"]["alembic_revision"]
    with tarfile.open(tmp_path / "b.tar.gz") as tar:
        fh = tar.extractfile(MANIFEST)
        assert fh is not None
        assert json.loads(fh.read())["files"] == manifest["files"]


def test_cli_backup_and_restore(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from kernex_cli.main import app

    runner = CliRunner()
    data = tmp_path / "data"
    made = runner.invoke(app, ["server", "init", "--data-dir", str(data), "--repo", "/srv/f"])
    assert made.exit_code == 0, made.output
    archive = tmp_path / "k.tar.gz"
    done = runner.invoke(app, ["server", "backup", str(archive), "--data-dir", str(data)])
    assert done.exit_code == 0, done.output
    assert "sqlite via sqlite" in done.output
    refused = runner.invoke(app, ["server", "restore", str(archive), "--data-dir", str(data)])
    assert refused.exit_code != 0
    assert "is not empty" in refused.output
    assert "Traceback" not in refused.output
    bad = runner.invoke(app, ["server", "backup", str(archive), "--method", "pg_dump",
                              "--data-dir", str(data)])  # fmt: skip
    assert bad.exit_code != 0
    assert "does not fit a sqlite database" in bad.output
    ok = runner.invoke(app, ["server", "restore", str(archive), "--data-dir",
                             str(tmp_path / "new"), "--json"])  # fmt: skip
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.output)["serial_floor"] == DEFAULT_SERIAL_JUMP


def test_a_device_ahead_of_the_server_is_served_above_its_serial(server: Any) -> None:
    """The safety net under the floor: a device that reports a serial higher than the one
    it is served (it refuses lower ones) gets the same content under a higher serial."""
    device = SimDevice("dev-1")
    device.enroll(server.client, token=server.enrollment_token())
    server.reconcile()
    first = verify_manifest(device.manifest(server.client).content, "dev-1", server.key)
    assert first.serial == 1
    report = {"phase": "failed", "serial": 7, "error": "manifest rejected (serial): 1 < 7"}
    assert device.status(server.client, report).status_code == 204
    raw = device.manifest(server.client).content
    lifted = verify_manifest(raw, "dev-1", server.key, min_serial=7)
    assert lifted.serial == 8
    assert lifted.desired_digest() == first.desired_digest()
    shown = server.admin_get("/v1/admin/devices/dev-1")
    assert shown["desired_serial"] == 8
    assert [d["serial"] for d in shown["deployments"]][:2] == [8, 1]
    audit = server.admin_get("/v1/admin/audit?action=device.serial_resumed")["entries"]
    assert audit[0]["detail"] == {"reported": 7, "was": 1, "serial": 8}
    # a lower (older) serial in a report changes nothing
    assert device.status(server.client, {"phase": "healthy", "serial": 3}).status_code == 204
    assert server.admin_get("/v1/admin/devices/dev-1")["desired_serial"] == 8
