"""The database goes away under a running server (SQLite: the file is replaced by a
directory it cannot open): devices and the CLI get 503 with Retry-After and a hint that
names the database, cached device keys keep serving, the log has one line when the outage
starts and one when it ends, and everything works again once the file is back."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from kit.device import SimDevice
from kit.wait import wait_for

from kernex_cli.client import AdminClient, ApiError, Connection
from kernex_server import auth


@pytest.fixture
def database(tmp_path: Path) -> dict[str, str]:
    """SQLite only: its outage is made by hiding the file."""
    return {"database_url": f"sqlite:///{tmp_path / 'outage.db'}"}


def take_away(db: Path) -> list[Path]:
    moved = []
    for path in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        if path.exists():
            path.rename(path.with_name(path.name + ".away"))
            moved.append(path)
    db.mkdir()  # "unable to open database file"
    return moved


def bring_back(db: Path, moved: list[Path]) -> None:
    db.rmdir()
    for path in moved:
        path.with_name(path.name + ".away").rename(path)


def test_outage_answers_503_serves_cached_keys_and_logs_once(
    start_server: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = start_server()
    device = SimDevice("dev-1")
    assert device.enroll(server.client, token=server.enrollment_token()).status_code == 201
    assert device.manifest(server.client).status_code == 200  # its key is now cached
    cli = AdminClient(
        Connection("http://testserver", server.token), transport=server.client._transport
    )
    assert cli.get("/v1/admin/devices")["devices"]

    caplog.set_level(logging.INFO, logger="kernex.server")
    monkeypatch.setattr(auth, "KEY_CACHE_SECONDS", 0.0)  # every key is due for a re-read
    server.kx.engine.dispose()
    moved = take_away(tmp_path / "outage.db")
    try:
        with pytest.raises(ApiError) as refused:
            cli.get("/v1/admin/devices")
        assert refused.value.status == 503
        assert refused.value.message == "the server's database is unavailable"
        assert "database" in (refused.value.hint or "")
        assert "nothing is wrong with your token" in (refused.value.hint or "")

        answer = device.status(server.client, {"phase": "healthy", "serial": 1})
        assert answer.status_code == 503
        assert answer.headers["retry-after"] == "5"
        assert "database is unavailable" in answer.json()["error"]

        for _ in range(3):  # the key cache is past its age: the cached key still serves
            assert device.manifest(server.client).status_code == 200
        stranger = SimDevice("dev-2")
        enrolled = stranger.enroll(server.client, token="kx_whatever")
        assert enrolled.status_code == 503
        assert "database" in enrolled.json()["hint"]
    finally:
        bring_back(tmp_path / "outage.db", moved)

    # the probe finds it again
    wait_for("the database to be back", lambda: not server.kx.database.down, 10)
    assert device.status(server.client, {"phase": "healthy", "serial": 1}).status_code == 204
    assert cli.get("/v1/admin/devices")["devices"][0]["status"]["phase"] == "healthy"

    lines = [r for r in caplog.records if r.name == "kernex.server" and r.levelno >= logging.WARN]
    assert not [r for r in lines if r.exc_info], "no traceback per request"
    starts = [r for r in lines if "database unavailable" in r.getMessage()]
    ends = [r for r in lines if "database available again" in r.getMessage()]
    assert len(starts) == 1, [r.getMessage() for r in lines]
    assert len(ends) == 1, [r.getMessage() for r in lines]
    about_it = [r for r in lines if "database" in r.getMessage() or "failed" in r.getMessage()]
    assert len(about_it) == 2, [r.getMessage() for r in lines]
