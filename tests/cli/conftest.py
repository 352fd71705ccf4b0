"""A real Kernex server (uvicorn on 127.0.0.1 in a background thread) for CLI tests, and a
CLI environment with its own config directory and no connection settings inherited."""

from __future__ import annotations

import secrets
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from serverkit import FleetRepo, SimDevice
from typer.testing import CliRunner

from kernex_cli.main import app
from kernex_core import keys
from kernex_server.app import create_app
from kernex_server.settings import Settings


@dataclass
class RunningServer:
    base: str
    token: str  # an admin token
    repo: FleetRepo
    kx: Any  # the app's ServerContext, to make tokens of other roles

    def token_for(self, role: str) -> str:
        token: str = self.kx.store.create_api_token(
            f"{role}-{secrets.token_hex(3)}", role, now=time.time()
        )
        return token

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.base, timeout=30)

    def admin(self, method: str, path: str, **kw: Any) -> Any:
        with self.http() as client:
            response = client.request(
                method, path, headers={"Authorization": f"Bearer {self.token}"}, **kw
            )
        assert response.status_code < 300, response.text
        return response.json() if response.content else None

    def enroll(self, device_id: str, **labels: str) -> SimDevice:
        """Enroll a simulated device with a fresh enrollment token (admitted at once)."""
        token = self.admin("POST", "/v1/admin/enrollment-tokens", json={"max_uses": 1})["token"]
        device = SimDevice(device_id, labels=labels)
        with self.http() as client:
            response = device.enroll(client, token=token)
        assert response.status_code == 201, response.text
        return device

    def enroll_pending(self, device_id: str) -> SimDevice:
        device = SimDevice(device_id)
        with self.http() as client:
            response = device.enroll(client)
        assert response.status_code in (201, 202), response.text
        return device

    def report(self, device: SimDevice, **report: Any) -> None:
        with self.http() as client:
            response = device.status(client, report)
        assert response.status_code == 204, response.text


def free_socket() -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


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


@contextmanager
def running_server(
    workdir: Path, fleet_repo: FleetRepo, server_repo: str, settings: dict[str, Any]
) -> Iterator[RunningServer]:
    """A real server (uvicorn in a thread) on a free loopback port, data under ``workdir``."""
    settings_ = Settings.from_mapping(
        {
            "data_dir": workdir / "data",
            "repo": server_repo,
            "poll_interval": 3600.0,
            "heartbeat_flush_interval": 0.2,
            "database_url": f"sqlite:///{workdir / 'server.db'}",
            **settings,
        }
    )
    application = create_app(settings_, manifest_key=keys.generate_ed25519())
    sock = free_socket()
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        application, log_level="warning", lifespan="on", ws="none", access_log=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive(), "the server thread died while starting"
        assert time.monotonic() < deadline, "the server did not start in 30 s"
        time.sleep(0.02)
    kx = application.state.kx
    token = kx.store.create_api_token(f"admin-{secrets.token_hex(3)}", "admin", now=time.time())
    try:
        yield RunningServer(f"http://127.0.0.1:{port}", token, fleet_repo, kx)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


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


class Kernex:
    """Runs `kernex ...` through CliRunner, with --server/--token of the running server."""

    def __init__(self, server: RunningServer) -> None:
        self.server = server
        self.runner = CliRunner()

    def __call__(self, *args: str, token: str | None = None, connect: bool = True) -> Any:
        extra = ["--server", self.server.base, "--token", token or self.server.token]
        return self.runner.invoke(app, [*args, *(extra if connect else [])])


@pytest.fixture
def kernex(kx_server: RunningServer, cli_env: Path) -> Kernex:
    return Kernex(kx_server)
