"""Every command's --help says what it does and shows an example."""

from __future__ import annotations

from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from kernex_cli.main import app

runner = CliRunner()


def leaf_commands() -> list[tuple[str, ...]]:
    root = typer.main.get_command(app)
    found: list[tuple[str, ...]] = []

    def walk(command: Any, path: tuple[str, ...]) -> None:
        subcommands = getattr(command, "commands", None)
        if subcommands:
            for name, sub in subcommands.items():
                walk(sub, (*path, name))
        else:
            found.append(path)

    walk(root, ())
    return found


def test_the_command_tree_is_complete() -> None:
    names = {path[0] for path in leaf_commands()}
    for noun in (
        "init",
        "validate",
        "plan",
        "deploy",
        "rollback",
        "config",
        "status",
        "devices",
        "bundle",
        "tokens",
        "audit",
        "server",
        "agent",
        "demo",
        "keys",
    ):
        assert noun in names


@pytest.mark.parametrize("path", leaf_commands(), ids=" ".join)
def test_help_has_an_example(path: tuple[str, ...]) -> None:
    result = runner.invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output, f"`kernex {' '.join(path)} --help` has no example"
