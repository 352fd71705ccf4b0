"""`kernex demo` with a few devices: the whole story, real server process, real agents."""

from __future__ import annotations

import re
import subprocess
import sys
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
    assert "The story ran as told" in out
    # the fleet repository holds the story as commits, newest first
    log = subprocess.run(
        ["git", "-C", str(workspace / "fleet"), "log", "--format=%s"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert log[:5] == [
        log[0],
        "deploy hello@1.1.0 to group all",
        "deploy hello@1.0.0 to group all",
        "bundle hello 1.1.0",
        "bundle hello 1.0.0",
    ]
    assert log[0].startswith("rollback group all to ")
    # the server the demo started is stopped
    url = re.search(r"Kernex server on (http://127\.0\.0\.1:\d+)", out)
    assert url is not None
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url.group(1)}/healthz")


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
