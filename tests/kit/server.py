"""Kernex servers for tests, each started one way.

``running_server``: the app under a real uvicorn on a free 127.0.0.1 port, in a background
thread, yielding a ``RunningServer`` (base URL, admin token, admin client, device helpers).
``InProcessServer``: the app in this process under a Starlette ``TestClient`` (no socket).
A server *process* (``kernex server run``) is ``kernex_cli.localserver.LocalServer``.
"""

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
import uvicorn
from starlette.testclient import TestClient

from kernex_core import keys
from kernex_server.app import create_app
from kernex_server.settings import Settings
from kit.device import SimDevice
from kit.fleet import FleetRepo
from kit.wait import wait_for


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
    wait_for("uvicorn to start", lambda: server.started or not thread.is_alive(), 30, every=0.02)
    assert server.started, "the server thread died while starting"
    kx = application.state.kx
    token = kx.store.create_api_token(f"admin-{secrets.token_hex(3)}", "admin", now=time.time())
    try:
        yield RunningServer(f"http://127.0.0.1:{port}", token, fleet_repo, kx)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


class InProcessServer:
    """The in-process app with its admin token, under a TestClient."""

    def __init__(self, client: TestClient, token: str, key: keys.PrivateKey) -> None:
        self.client = client
        self.token = token
        self.key = key
        self.kx = client.app.state.kx  # type: ignore[attr-defined]

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def admin_post(self, path: str, **kw: Any) -> Any:
        response = self.client.post(path, headers=self.auth, **kw)
        assert response.status_code < 300, response.text
        return response.json() if response.content else None

    def admin_get(self, path: str) -> Any:
        response = self.client.get(path, headers=self.auth)
        assert response.status_code == 200, response.text
        return response.json()

    def reconcile(self) -> dict[str, Any]:
        result: dict[str, Any] = self.admin_post("/v1/admin/reconcile")
        return result

    def enrollment_token(self, **body: Any) -> str:
        token: str = self.admin_post("/v1/admin/enrollment-tokens", json=body)["token"]
        return token


def migration_head() -> str:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from kernex_server.database import migrations_dir

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None
    return head
