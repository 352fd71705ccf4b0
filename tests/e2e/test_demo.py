"""`kernex demo` with a few devices: the whole story, real server process, real agents."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from kernex_cli.main import app

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
runner = CliRunner()


def test_demo_tells_the_whole_story(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    result = runner.invoke(app, ["demo", "--devices", "6", "--workspace", str(workspace)])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "Enrolled 6 simulated devices" in out
    assert "$ kernex bundle build hello-1.0.0 && kernex bundle push hello-1.0.0.tar.gz" in out
    assert "All 6 devices run hello 1.0.0" in out
    # devices 2 and 5 have hw=rev-a (dealt in turn): they roll back by themselves
    assert "failed its health check on the 2 hw=rev-a devices" in out
    assert "the other 4 run 1.1.0" in out
    assert "no sensor driver on rev-a hardware" in out
    assert "all 6 devices run hello 1.0.0" in out
    # the last act: a staged rollout whose first wave (ceil(10% of 6) = 1 device) fails
    assert "Gave group all a rollout: a first wave of 10%, then 100% after 2 s" in out
    assert "rollout 1: halted, wave 1/2 (10%)" in out
    assert "hello 1.2.0 reached the first wave only: 1 of 6 devices took it, 1 failed" in out
    assert "the other 5 never received 1.2.0" in out
    assert "rollout 1 halted: 1 of 1 admitted devices failed (threshold 0%: 0 allowed)" in out
    assert "cannot reach the sensor service" in out
    assert "Every device is healthy on the version it had" in out
    assert "$ kernex rollouts list" in out
    assert "The story ran as told" in out
    assert re.search(r"halt hello 1\.2\.0 +\d+\.\d+ s", out)
    assert re.search(r"auto-rollback 1\.2\.0 +\d+\.\d+ s", out)
    # the fleet repository holds the story as commits, newest first
    log = subprocess.run(
        ["git", "-C", str(workspace / "fleet"), "log", "--format=%s"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert log[:3] == [
        "deploy hello@1.2.0 to group all",
        "all: stage releases in two waves, halt on the first failure",
        "bundle hello 1.2.0",
    ]
    assert log[3:8] == [
        log[3],
        "deploy hello@1.1.0 to group all",
        "deploy hello@1.0.0 to group all",
        "bundle hello 1.1.0",
        "bundle hello 1.0.0",
    ]
    assert log[3].startswith("rollback group all to ")
    _assert_halted_rollout(workspace / "server" / "kernex.db", devices=6)
    # a dashboard login was made and named, with its URL
    assert re.search(r"Made a dashboard login: http://127\.0\.0\.1:\d+/ui/ as 'demo'", out)
    assert "kernex demo --keep" in out
    with closing(sqlite3.connect(workspace / "server" / "kernex.db")) as conn:
        assert conn.execute("SELECT name, role FROM users").fetchall() == [("demo", "operator")]
    # the server the demo started is stopped
    url = re.search(r"Kernex server on (http://127\.0\.0\.1:\d+)", out)
    assert url is not None
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url.group(1)}/healthz")


def _assert_halted_rollout(db: Path, *, devices: int) -> None:
    """Read the stopped server's database: the rollout halted after its first wave, only
    that wave was ever served hello 1.2.0, and every device ended healthy on 1.0.0."""
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute('SELECT id, state, "group" FROM rollouts').fetchall() == [
            (1, "halted", "all")
        ]
        members = conn.execute(
            "SELECT device_id, wave, new_serial, rollback_serial FROM rollout_devices"
        ).fetchall()
        assert len(members) == devices
        canaries = {d: (new, back) for d, wave, new, back in members if wave == 0}
        assert len(canaries) == 1
        served: dict[str, list[tuple[int, str | None]]] = {}
        for device_id, serial, bundles in conn.execute(
            "SELECT device_id, serial, bundles FROM deployments ORDER BY serial"
        ):
            served.setdefault(device_id, []).append((serial, json.loads(bundles).get("hello")))
        for device_id, _wave, _new, _back in members:
            versions = [v for _, v in served[device_id]]
            if device_id in canaries:
                new, back = canaries[device_id]
                assert back is not None
                assert back > new
                assert served[device_id][-2:] == [(new, "1.2.0"), (back, "1.0.0")]
            else:
                assert "1.2.0" not in versions, device_id
                assert versions[-1] == "1.0.0"
        status = conn.execute("SELECT phase, bundles FROM device_status").fetchall()
        assert [(p, json.loads(b)) for p, b in status] == [
            ("healthy", {"hello": "1.0.0"})
        ] * devices
        reported = conn.execute("SELECT device_id, bundles FROM status_reports").fetchall()
        reported_new = {d for d, b in reported if json.loads(b or "{}").get("hello") == "1.2.0"}
        assert reported_new <= set(canaries)


def test_demo_fails_with_a_reason_on_a_nonempty_workspace(tmp_path: Path) -> None:
    (tmp_path / "something").write_text("x")
    result = runner.invoke(app, ["demo", "--devices", "2", "--workspace", str(tmp_path)])
    assert result.exit_code == 1
    assert "not empty" in result.output


def test_demo_runs_as_a_command_without_a_terminal(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "kernex_cli", "demo", "--devices", "3",
         "--workspace", str(tmp_path / "ws")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "The story ran as told" in done.stdout
