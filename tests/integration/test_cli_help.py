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


def every_command() -> list[tuple[str, ...]]:
    """The root, every noun and every leaf: each has its own --help."""
    root = typer.main.get_command(app)
    found: list[tuple[str, ...]] = []

    def walk(command: Any, path: tuple[str, ...]) -> None:
        found.append(path)
        for name, sub in (getattr(command, "commands", None) or {}).items():
            walk(sub, (*path, name))

    walk(root, ())
    return found


@pytest.mark.parametrize("path", every_command(), ids=lambda p: " ".join(p) or "kernex")
def test_help_shows_no_type_placeholders_for_flags_or_lists(path: tuple[str, ...]) -> None:
    """A flag takes no value, so `--json <bool>` misleads; `<list[str]>` is Python's type,
    not what to type (repeatable options name their value, e.g. KEY=VALUE)."""
    result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for placeholder in ("<bool>", "list[", "<Path>"):
        assert placeholder not in result.output, (
            f"`kernex {' '.join(path)} --help` shows {placeholder}:\n{result.output}"
        )
