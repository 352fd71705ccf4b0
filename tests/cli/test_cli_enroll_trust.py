"""`kernex agent enroll` and `kernex server info` against a real server on loopback: the
agent checks the server before it enrolls, and waits out the enrollment rate limit."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import RunningServer
from serverkit import SimDevice
from typer.testing import CliRunner

from kernex_cli.main import app

runner = CliRunner()


@pytest.fixture
def server_settings() -> dict[str, Any]:
    return {"enroll_rate": 1.0, "enroll_burst": 1}


def _agent_enroll(server: RunningServer, data: Path, *extra: str) -> Any:
    token = server.admin("POST", "/v1/admin/enrollment-tokens", json={"max_uses": 1})["token"]
    args = ["agent", "enroll", "--server", server.base, "--token", token, "--data-dir", str(data)]
    return runner.invoke(app, [*args, *extra, "--json"])


def test_agent_enroll_waits_out_the_enrollment_rate_limit(
    kx_server: RunningServer, tmp_path: Path, cli_env: Path
) -> None:
    with kx_server.http() as client:
        assert SimDevice("first").enroll(client).status_code == 201  # spends the burst
        assert SimDevice("second").enroll(client).status_code == 429
    started = time.monotonic()
    result = _agent_enroll(kx_server, tmp_path / "agent", "--device-id", "edge-1")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["state"] == "accepted"
    assert time.monotonic() - started < 10
