"""`kernex users add|list|disable|enable|passwd` against the real server."""

from __future__ import annotations

import json
from typing import Any

from kit.cli import Kernex
from kit.server import RunningServer

from kernex_cli.main import app


def users(kernex: Kernex, *args: str, stdin: str | None = None) -> Any:
    extra = ["--server", kernex.server.base, "--token", kernex.server.token]
    return kernex.runner.invoke(app, ["users", *args, *extra], input=stdin)


def test_users_add_list_disable_passwd(kernex: Kernex, kx_server: RunningServer) -> None:
    added = users(kernex, "add", "alice", "--role", "operator", "--password-stdin", "--json",
                  stdin="correct horse battery\n")  # fmt: skip
    assert added.exit_code == 0, added.output
    assert json.loads(added.stdout)["role"] == "operator"
    prompted = users(kernex, "add", "bob", "--role", "viewer",
                     stdin="another password\nanother password\n")  # fmt: skip
    assert prompted.exit_code == 0, prompted.output
    listed = users(kernex, "list")
    assert "alice" in listed.output
    assert "bob" in listed.output
    assert "battery" not in listed.output
    disabled = users(kernex, "disable", "bob")
    assert "disabled" in disabled.output
    assert json.loads(users(kernex, "list", "--json").stdout)["users"][1]["disabled"]
    short = users(kernex, "passwd", "alice", "--password-stdin", stdin="short\n")
    assert short.exit_code == 1
    assert "shorter than" in short.output
    assert "Traceback" not in short.output
    ok = users(kernex, "passwd", "alice", "--password-stdin", stdin="a longer password\n")
    assert ok.exit_code == 0, ok.output
    missing = users(kernex, "disable", "nobody")
    assert missing.exit_code == 1
    assert "no user 'nobody'" in missing.output
