"""`kernex agent enroll` and `kernex server info` against a real server on loopback: the
agent checks the server before it enrolls, and waits out the enrollment rate limit."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from kit.device import SimDevice
from kit.server import RunningServer
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


def _server_key_id(server: RunningServer) -> str:
    from kernex_core import keys

    return keys.fingerprint(server.kx.manifest_public_key)


def test_a_wrong_server_key_fingerprint_is_refused_before_enrolling(
    kx_server: RunningServer, tmp_path: Path, cli_env: Path
) -> None:
    from kernex_core import keys

    token = kx_server.admin("POST", "/v1/admin/enrollment-tokens", json={"max_uses": 1})
    wrong = keys.fingerprint(keys.generate_ed25519().public_key())
    data = tmp_path / "agent"
    args = ["agent", "enroll", "--server", kx_server.base, "--token", token["token"]]
    args += ["--device-id", "edge-1", "--data-dir", str(data)]
    result = runner.invoke(
        app,
        [*args, "--server-key-fingerprint", wrong],
    )
    assert result.exit_code == 1, result.output
    assert "refusing to enroll" in result.output
    assert "not the expected" in result.output
    assert "Traceback" not in result.output
    # no ghost device, no token use spent, nothing written on the device
    assert kx_server.admin("GET", "/v1/admin/devices")["devices"] == []
    tokens = kx_server.admin("GET", "/v1/admin/enrollment-tokens")["tokens"]
    assert [t["uses"] for t in tokens] == [0]
    assert not (data / "device.key").exists()
    assert kx_server.admin("GET", "/v1/admin/audit?action=device.enroll")["entries"] == []
    # the right fingerprint enrolls, with the same token
    result = runner.invoke(
        app,
        [*args, "--json", "--server-key-fingerprint", _server_key_id(kx_server)],
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert (out["state"], out["fingerprint_checked"]) == ("accepted", True)


def test_server_info_prints_url_version_and_the_proven_manifest_key(
    kx_server: RunningServer, cli_env: Path
) -> None:
    from kernex_core import __version__

    shown = runner.invoke(app, ["server", "info", "--server", kx_server.base])
    assert shown.exit_code == 0, shown.output
    assert kx_server.base in shown.output
    assert __version__ in shown.output
    assert _server_key_id(kx_server) in shown.output
    assert "--server-key-fingerprint" in shown.output
    as_json = runner.invoke(app, ["server", "info", "--server", kx_server.base, "--json"])
    assert as_json.exit_code == 0, as_json.output
    data = json.loads(as_json.stdout)
    assert data["manifest_key_id"] == _server_key_id(kx_server)
    assert (data["server"], data["url"], data["proven"]) == (kx_server.base, kx_server.base, True)
    assert data["version"] == __version__


def test_server_info_errors_are_one_line_with_a_hint(cli_env: Path, tmp_path: Path) -> None:
    sock = socket.socket()  # bound, never listening: connection refused
    sock.bind(("127.0.0.1", 0))
    try:
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        down = runner.invoke(app, ["server", "info", "--server", url, "--timeout", "5"])
    finally:
        sock.close()
    assert down.exit_code == 1
    assert "cannot reach" in down.output
    assert "Traceback" not in down.output
    nothing = runner.invoke(app, ["server", "info"])
    assert nothing.exit_code == 1
    assert "no Kernex server given" in nothing.output
