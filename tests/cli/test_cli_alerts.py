"""`kernex alerts test` and `kernex alerts list` against a real server (uvicorn on
127.0.0.1) whose server.toml declares two receivers: one listening, one down."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from typing import Any

import pytest
from kit.alertsink import AlertSink
from kit.cli import Kernex


@pytest.fixture
def up() -> Iterator[AlertSink]:
    sink = AlertSink(secrets.token_hex(32)).start()
    yield sink
    sink.stop()


@pytest.fixture
def server_settings(up: AlertSink) -> dict[str, Any]:
    down = AlertSink(secrets.token_hex(32))  # never started: connection refused
    return {"alerts": [up.receiver("ops"), down.receiver("chat", format="slack")]}


def test_alerts_test_reports_each_receiver_and_exits_1_when_one_missed(
    kernex: Kernex, up: AlertSink
) -> None:
    result = kernex("alerts", "test")
    assert result.exit_code == 1, result.output
    assert "ops: delivered (HTTP 200)" in result.output
    assert "chat: not delivered: ConnectError" in result.output
    [got] = up.deliveries
    assert got.signed
    assert got.headers["kernex-event"] == "test"

    only = kernex("alerts", "test", "--receiver", "ops", "--json")
    assert only.exit_code == 0, only.output
    assert [d["receiver"] for d in json.loads(only.output)["deliveries"]] == ["ops"]
    assert len(up.deliveries) == 2

    missing = kernex("alerts", "test", "--receiver", "pager")
    assert missing.exit_code == 1
    assert "no alert receiver named 'pager'" in missing.output

    listed = kernex("alerts", "list")
    assert listed.exit_code == 0, listed.output
    assert f"ops (generic) http://127.0.0.1:{up.port}" in listed.output
    assert "outbox: 0 pending, 2 delivered, 1 failed" in listed.output
    assert "/hooks/kernex" not in listed.output  # a receiver's path may be its secret


def test_a_viewer_may_list_but_not_send(kernex: Kernex, up: AlertSink) -> None:
    viewer = kernex.server.token_for("viewer")
    assert kernex("alerts", "list", token=viewer).exit_code == 0
    refused = kernex("alerts", "test", token=viewer)
    assert refused.exit_code == 1
    assert up.deliveries == []
