"""Connection settings and the mapped errors: login (0600), unreachable, 401, 403."""

from __future__ import annotations

import json
import socket
import stat
from pathlib import Path

import pytest
from kit.cli import Kernex
from kit.server import RunningServer

from kernex_cli.main import app


def test_login_saves_0600_and_later_commands_use_it(
    kernex: Kernex, kx_server: RunningServer, cli_env: Path
) -> None:
    result = kernex.runner.invoke(
        app,
        ["login", "--server", kx_server.base, "--token", kx_server.token],
    )
    assert result.exit_code == 0, result.output
    saved = cli_env / "kernex" / "credentials.json"
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert json.loads(saved.read_text())["server"] == kx_server.base
    kx_server.enroll("edge-1")
    listed = kernex("devices", "list", "--json", connect=False)
    assert listed.exit_code == 0, listed.output
    assert [d["id"] for d in json.loads(listed.stdout)["devices"]] == ["edge-1"]


def test_login_with_a_bad_token_saves_nothing(
    kernex: Kernex, kx_server: RunningServer, cli_env: Path
) -> None:
    result = kernex.runner.invoke(app, ["login", "--server", kx_server.base, "--token", "kx_bad"])
    assert result.exit_code == 1
    assert not (cli_env / "kernex" / "credentials.json").exists()


def test_environment_supplies_the_connection(
    kernex: Kernex, kx_server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KERNEX_SERVER", kx_server.base)
    monkeypatch.setenv("KERNEX_TOKEN", kx_server.token)
    assert kernex("enroll-tokens", "list", connect=False).exit_code == 0


def test_no_connection_configured(kernex: Kernex) -> None:
    result = kernex("devices", "list", connect=False)
    assert result.exit_code == 1
    assert "kernex login" in result.output


def test_unreachable_server(kernex: Kernex) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connection refused
        result = kernex.runner.invoke(
            app,
            [
                "devices",
                "list",
                "--server",
                f"http://ops:s3cret@127.0.0.1:{port}",
                "--token",
                "kx_x",
            ],
        )
    assert result.exit_code == 1
    assert f"cannot reach the Kernex server at http://***@127.0.0.1:{port}" in result.output
    assert "s3cret" not in result.output
    assert "Traceback" not in result.output


def test_bad_token_is_401_with_a_hint(kernex: Kernex) -> None:
    result = kernex("devices", "list", token="kx_not_a_real_token")
    assert result.exit_code == 1
    assert "error:" in result.output
    assert "hint:" in result.output


def test_forbidden_for_a_low_role(kernex: Kernex, kx_server: RunningServer) -> None:
    viewer = kx_server.token_for("viewer")
    assert kernex("devices", "list", token=viewer).exit_code == 0
    result = kernex("enroll-tokens", "create", token=viewer)
    assert result.exit_code == 1
    assert "role" in result.output.lower()


@pytest.mark.parametrize(
    "command",
    [
        ["status"],
        ["devices", "list"],
        ["devices", "show"],
        ["devices", "accept"],
        ["enroll-tokens", "create"],
        ["tokens", "create"],
        ["audit"],
    ],
)
def test_help_has_an_example(command: list[str], kernex: Kernex) -> None:
    result = kernex(*command, "--help", connect=False)
    assert result.exit_code == 0, result.output
    assert "Example: kernex" in result.output
