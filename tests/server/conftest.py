"""Fixtures for the server tests: databases (SQLite and PostgreSQL), repo, app."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from kit.apicheck import check_answers
from kit.fleet import FleetRepo
from kit.server import InProcessServer
from starlette.testclient import TestClient

from kernex_core import keys
from kernex_server.app import create_app
from kernex_server.settings import Settings


@pytest.fixture(autouse=True)
def answers_match_openapi(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every TestClient of a Kernex app in the server tests checks each answer against the
    app's /openapi.json (tests/kit/apicheck.py), however the test made the client."""
    enter = TestClient.__enter__

    def checked_enter(self: TestClient) -> TestClient:
        if hasattr(getattr(self.app, "state", None), "kx"):
            check_answers(self)
        return enter(self)

    monkeypatch.setattr(TestClient, "__enter__", checked_enter)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    """Settings for one fresh database: a SQLite file, or a PostgreSQL schema of its own."""
    if request.param == "sqlite":
        yield {"database_url": f"sqlite:///{tmp_path / 'test.db'}"}
        return
    url = request.getfixturevalue("postgres_url")
    schema = f"kx_test_{secrets.token_hex(6)}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    try:
        yield {"database_url": url, "database_schema": schema}
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        engine.dispose()


@pytest.fixture
def fleet_repo(tmp_path: Path) -> FleetRepo:
    return FleetRepo(tmp_path / "fleet")


@pytest.fixture
def manifest_key() -> keys.PrivateKey:
    return keys.generate_ed25519()


@pytest.fixture
def make_settings(tmp_path: Path, database: dict[str, str], fleet_repo: FleetRepo) -> Any:
    def build(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "data_dir": tmp_path / "data",
            "repo": str(fleet_repo.path),
            "poll_interval": 3600.0,
            **database,
            **overrides,
        }
        return Settings.from_mapping(values)

    return build


@pytest.fixture
def start_server(manifest_key: keys.PrivateKey, make_settings: Any) -> Iterator[Any]:
    clients: list[TestClient] = []

    def start(*, background: bool = False, **overrides: Any) -> InProcessServer:
        settings = make_settings(**overrides)
        app = create_app(settings, manifest_key=manifest_key, background=background)
        client = TestClient(app)
        check_answers(client)
        client.__enter__()
        clients.append(client)
        token = app.state.kx.store.create_api_token(
            f"test-{secrets.token_hex(3)}", "admin", now=time.time()
        )
        return InProcessServer(client, token, manifest_key)

    yield start
    for client in reversed(clients):
        client.__exit__(None, None, None)


@pytest.fixture
def server(start_server: Any) -> InProcessServer:
    srv: InProcessServer = start_server()
    return srv
