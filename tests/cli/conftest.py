"""Fixtures for the CLI tests: a real Kernex server (``kit.server.running_server``: uvicorn on
127.0.0.1 in a background thread) and a CLI environment with its own config directory and
no connection settings inherited."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kit.cli import Kernex
from kit.fleet import FleetRepo
from kit.server import RunningServer, running_server


@pytest.fixture
def fleet_repo(tmp_path: Path) -> FleetRepo:
    return FleetRepo(tmp_path / "fleet")


@pytest.fixture
def server_repo(fleet_repo: FleetRepo) -> str:
    """What the server's `repo` setting names: by default the very repository tests edit."""
    return str(fleet_repo.path)


@pytest.fixture
def server_settings() -> dict[str, Any]:
    """More server settings; a test module overrides this fixture to set its own."""
    return {}


@pytest.fixture
def kx_server(
    tmp_path: Path, fleet_repo: FleetRepo, server_repo: str, server_settings: dict[str, Any]
) -> Iterator[RunningServer]:
    with running_server(tmp_path, fleet_repo, server_repo, server_settings) as server:
        yield server


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No KERNEX_SERVER/KERNEX_TOKEN from outside; `kernex login` writes under tmp_path."""
    config = tmp_path / "config"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config))
    monkeypatch.delenv("KERNEX_SERVER", raising=False)
    monkeypatch.delenv("KERNEX_TOKEN", raising=False)
    monkeypatch.setenv("COLUMNS", "200")
    return config


@pytest.fixture
def kernex(kx_server: RunningServer, cli_env: Path) -> Kernex:
    return Kernex(kx_server)
