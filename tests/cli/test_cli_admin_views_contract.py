"""`kernex status`, `tokens` and `audit` rendering, against answers shaped exactly as the
admin contract says (pytest-httpx stands in for the server: one side under test).

The same commands run against the real server in test_cli_admin_views.py."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from pytest_httpx import HTTPXMock
from typer.testing import CliRunner

from kernex_cli.main import app

BASE = "http://kernex.test"
CONNECT = ["--server", BASE, "--token", "kx_test"]
runner = CliRunner()

STATUS = {
    "revision": {
        "current": "b" * 40,
        "deployed": "a" * 40,
        "last_reconcile_at": "2026-11-22T02:05:37Z",
        "last_result": "invalid",
        "last_error": "2 validation errors",
        "errors": [
            {
                "file": "groups/canary.yaml",
                "line": 4,
                "column": 3,
                "key_path": "bundles.hello",
                "message": "hello 9.9.9 is not in the catalog",
                "hint": None,
            }
        ],
        "forced": False,
    },
    "devices": {
        "total": 3,
        "online": 1,
        "offline": 1,
        "pending": 1,
        "by_phase": {"healthy": 1, "failed": 1},
        "out_of_sync": 1,
    },
    "rollouts": {"active": 0, "halted": 0},
    "bundles": 4,
}
DEVICES = {
    "devices": [
        {"id": "edge-1", "state": "accepted", "online": True, "deployment_pending": False},
        {"id": "edge-2", "state": "accepted", "online": False, "deployment_pending": True},
        {"id": "edge-3", "state": "pending", "online": False, "deployment_pending": False},
    ]
}


@pytest.fixture(autouse=True)
def _env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.setenv("COLUMNS", "200")


def test_status_shows_revision_errors_and_lagging_devices(httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(url=f"{BASE}/v1/admin/status", json=STATUS)
    httpx_mock.add_response(url=f"{BASE}/v1/admin/devices", json=DEVICES)
    result = runner.invoke(app, ["status", *CONNECT])
    assert result.exit_code == 1, result.output  # the newest commit is invalid
    out = result.output
    assert "deployed aaaaaaaaaaaa" in out
    assert "groups/canary.yaml" in out
    assert "not in the catalog" in out
    assert re.search(r"out of sync\s+1: edge-2", out)
    assert re.search(r"offline\s+edge-2", out)
    assert "edge-3" in out  # pending admission


def test_status_json(httpx_mock: HTTPXMock) -> None:
    ok = {**STATUS, "revision": {**STATUS["revision"], "last_result": "ok", "errors": []}}
    httpx_mock.add_response(url=f"{BASE}/v1/admin/status", json=ok)
    httpx_mock.add_response(url=f"{BASE}/v1/admin/devices", json=DEVICES)
    result = runner.invoke(app, ["status", "--json", *CONNECT])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["devices"]["by_phase"] == {"healthy": 1, "failed": 1}
    assert data["out_of_sync_devices"] == ["edge-2"]
    assert data["offline_devices"] == ["edge-2"]


def test_tokens_create_sends_role_and_expiry(httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(
        method="POST",
        url=f"{BASE}/v1/admin/tokens",
        status_code=201,
        json={
            "id": 7,
            "name": "ci",
            "role": "operator",
            "created_by": "root",
            "created_at": "2026-11-22T02:05:37Z",
            "expires_at": None,
            "last_used_at": None,
            "revoked": False,
            "token": "kx_secret",
        },
    )
    result = runner.invoke(
        app,
        ["tokens", "create", "--name", "ci", "--role", "operator", "--expires-in", "2h", *CONNECT],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(httpx_mock.get_request().content) == {
        "name": "ci",
        "role": "operator",
        "expires_in": 7200,
    }
    assert result.stdout.strip().endswith("kx_secret")


def test_tokens_create_refuses_an_unknown_role() -> None:
    result = runner.invoke(app, ["tokens", "create", "--name", "x", "--role", "root", *CONNECT])
    assert result.exit_code == 2


def test_audit_sends_filters(httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(
        json={
            "entries": [
                {
                    "id": 1,
                    "at": "2026-11-22T02:05:37Z",
                    "actor": "ci",
                    "action": "device.accept",
                    "target": "edge-1",
                    "address": "127.0.0.1",
                    "result": "ok",
                    "detail": {},
                }
            ]
        }
    )
    result = runner.invoke(
        app, ["audit", "--since", "1h", "--actor", "ci", "--limit", "5", *CONNECT]
    )
    assert result.exit_code == 0, result.output
    assert "device.accept" in result.output
    params = httpx_mock.get_request().url.params
    assert params["since"] == "1h"
    assert params["actor"] == "ci"
    assert params["limit"] == "5"


def test_audit_bad_since_is_a_usage_error() -> None:
    result = runner.invoke(app, ["audit", "--since", "yesterday", *CONNECT])
    assert result.exit_code == 2
