"""`kernex` names the extra a command needs instead of failing with a traceback (the real
installs are run in tests/cli/test_base_install.py)."""

from __future__ import annotations

import importlib.util
import sys
from importlib.machinery import ModuleSpec

import pytest

from kernex_cli import launch


@pytest.fixture
def without(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """Top-level modules to pretend are not installed."""
    gone: set[str] = set()
    real = importlib.util.find_spec

    def find_spec(name: str, package: str | None = None) -> ModuleSpec | None:
        return None if name.split(".")[0] in gone else real(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    return gone


def test_everything_installed_needs_nothing(without: set[str]) -> None:
    for argv in ([], ["status"], ["server", "run"], ["demo"]):
        assert launch.needed_extra(argv) is None


def test_without_the_cli_every_kernex_command_names_the_cli_extra(without: set[str]) -> None:
    without.add("typer")
    for argv in ([], ["--help"], ["server", "run"]):
        assert launch.needed_extra(argv) == "cli"
    line = launch.message("cli", [])
    assert "pip install 'kernex-fleet[cli]'" in line
    assert "\n" not in line


def test_without_the_server_only_server_and_demo_need_it(without: set[str]) -> None:
    without.add("sqlalchemy")
    assert launch.needed_extra(["server", "run"]) == "server"
    assert launch.needed_extra(["--version", "demo"]) == "server"
    assert launch.needed_extra(["server", "--help"]) is None  # help still shows
    assert launch.needed_extra(["validate"]) is None
    assert launch.needed_extra(["agent", "run"]) is None
    assert "`kernex server` needs the server extra" in launch.message("server", ["server", "run"])


def test_a_missing_module_maps_to_its_extra_or_to_none() -> None:
    assert launch.extra_of("sqlalchemy.orm") == "server"
    assert launch.extra_of("uvicorn") == "server"
    assert launch.extra_of("ruamel.yaml") == "cli"
    assert launch.extra_of("kernex_cli.nonexistent") is None
    assert launch.extra_of(None) is None


def test_a_module_lost_mid_command_is_named_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken() -> None:
        raise ModuleNotFoundError("No module named 'starlette'", name="starlette")

    monkeypatch.setattr("kernex_cli.main.main", broken)
    monkeypatch.setattr(sys, "argv", ["kernex", "status"])
    with pytest.raises(SystemExit) as exited:
        launch.main()
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "starlette is missing" in err
    assert "pip install 'kernex-fleet[server]'" in err


def test_other_import_errors_are_not_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> None:
        raise ModuleNotFoundError("No module named 'kernex_cli.typo'", name="kernex_cli.typo")

    monkeypatch.setattr("kernex_cli.main.main", broken)
    monkeypatch.setattr(sys, "argv", ["kernex", "status"])
    with pytest.raises(ModuleNotFoundError):
        launch.main()
