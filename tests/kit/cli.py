"""The ``kernex`` command line in tests: ``CliRunner`` with a running server's connection."""

from __future__ import annotations

from typing import Any

from typer.testing import CliRunner

from kernex_cli.main import app
from kit.server import RunningServer


class Kernex:
    """Runs `kernex ...` through CliRunner, with --server/--token of the running server."""

    def __init__(self, server: RunningServer) -> None:
        self.server = server
        self.runner = CliRunner()

    def __call__(self, *args: str, token: str | None = None, connect: bool = True) -> Any:
        extra = ["--server", self.server.base, "--token", token or self.server.token]
        return self.runner.invoke(app, [*args, *(extra if connect else [])])
