"""Alerts against the real app and database (SQLite and PostgreSQL) and a real HTTP
receiver on loopback: what is found, how it is grouped, retried and kept across a restart."""

from __future__ import annotations

import json
import secrets
import socket
import time
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from kit.alertsink import AlertSink
from kit.device import SimDevice
from starlette.testclient import TestClient

from kernex_core import keys
from kernex_server import alerts
from kernex_server.app import create_app
from kernex_server.models import AlertOutbox, Rollout


class Clock:
    """Real time plus an offset the test moves (within the 300 s a receiver accepts)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@pytest.fixture
def sink() -> Iterator[AlertSink]:
    s = AlertSink(secrets.token_hex(32))
    yield s
    s.stop()


class App:
    def __init__(self, client: TestClient, token: str) -> None:
        self.client = client
        self.token = token
        self.kx = client.app.state.kx  # type: ignore[attr-defined]
        self.clock = Clock()
        self.kx.alerter.clock = self.clock

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def alert_pass(self) -> None:
        self.client.portal.call(self.kx.flush_statuses)  # type: ignore[union-attr]
        self.client.portal.call(self.kx.alerter.run_pass)  # type: ignore[union-attr]

    def post(self, path: str, **kw: Any) -> Any:
        response = self.client.post(path, headers=self.auth, **kw)
        assert response.status_code < 300, response.text
        return response.json() if response.content else None

    def outbox(self) -> list[AlertOutbox]:
        with self.kx.store.sessions() as s:
            return list(s.query(AlertOutbox).order_by(AlertOutbox.id))

    def metric(self, line: str) -> bool:
        return line in self.client.get("/metrics").text


@pytest.fixture
def start_app(make_settings: Any, manifest_key: keys.PrivateKey) -> Iterator[Any]:
    apps: list[App] = []

    def start(**overrides: Any) -> App:
        app = create_app(make_settings(**overrides), manifest_key=manifest_key, background=False)
        client = TestClient(app)
        client.__enter__()
        token = app.state.kx.store.create_api_token(
            f"ops-{secrets.token_hex(3)}", "admin", now=time.time()
        )
        apps.append(App(client, token))
        return apps[-1]

    def stop(app: App) -> None:
        apps.remove(app)
        app.client.__exit__(None, None, None)

    start.stop = stop  # type: ignore[attr-defined]
    yield start
    for app in reversed(apps):
        app.client.__exit__(None, None, None)


def refuse_a_commit(app: App, fleet_repo: Any) -> str:
    fleet_repo.write("kernex.yaml", "apiVersion: kernex/v1\nname: [not, a, name]\n")
    commit: str = fleet_repo.commit("a broken kernex.yaml")
    assert app.post("/v1/admin/reconcile")["state"] == "invalid"
    return commit


def test_a_refused_commit_alerts_each_receiver_once_signed(
    start_app: Any, fleet_repo: Any, sink: AlertSink
) -> None:
    slack = AlertSink(secrets.token_hex(32))
    try:
        sink.start()
        slack.start()
        app = start_app(alerts=[sink.receiver(), slack.receiver("chat", format="slack")])
        app.alert_pass()  # the first pass starts the cursors at the newest rows
        assert sink.deliveries == []
        commit = refuse_a_commit(app, fleet_repo)
        app.alert_pass()
        app.alert_pass()

        [got] = sink.deliveries
        assert got.signed
        assert got.headers["kernex-event"] == "commit.refused"
        doc = got.json()
        assert doc["id"] == got.key
        assert got.key.startswith("commit.refused:")
        assert doc["kind"] == "commit.refused"
        assert commit[:12] in doc["summary"]
        assert "invalid" in doc["summary"]
        assert doc["detail"]["commit"] == commit
        assert doc["detail"]["error_count"] >= 1
        [chat] = slack.deliveries
        assert chat.signed
        assert chat.key == got.key
        assert commit[:12] in chat.json()["text"]
        assert app.metric('kernex_alert_outbox{state="delivered"} 2.0')
        assert app.metric('kernex_alert_deliveries_total{result="delivered"} 2.0')
    finally:
        slack.stop()


def test_device_failures_are_grouped_per_window_and_a_repeat_is_not_news(
    start_app: Any, sink: AlertSink
) -> None:
    sink.start()
    app = start_app(alerts=[sink.receiver()], alert_group_seconds=60.0)
    app.alert_pass()
    token = app.post("/v1/admin/enrollment-tokens", json={"max_uses": 3})["token"]
    devices = [SimDevice(f"edge-{i}") for i in range(3)]
    for d in devices:
        assert d.enroll(app.client, token=token).status_code == 201

    def report(device: SimDevice, phase: str, serial: int = 1) -> None:
        body = {"phase": phase, "serial": serial, "error": None if phase == "healthy" else "boom"}
        assert device.status(app.client, body).status_code == 204

    report(devices[0], "failed")
    report(devices[1], "rolled_back")
    app.alert_pass()
    assert sink.deliveries == []  # the window is open: more failures may join
    assert app.metric('kernex_alert_outbox{state="pending"} 1.0')
    report(devices[2], "failed")
    report(devices[0], "failed")  # the same failure again: already in
    app.alert_pass()
    app.clock.offset = 61
    app.alert_pass()

    [got] = sink.deliveries
    assert got.signed
    assert got.headers["kernex-event"] == "devices.failed"
    detail = got.json()["detail"]
    assert detail["count"] == 3
    assert [(d["device"], d["phase"]) for d in detail["devices"]] == [
        ("edge-0", "failed"), ("edge-1", "rolled_back"), ("edge-2", "failed"),
    ]  # fmt: skip
    assert got.json()["summary"].startswith("3 devices failed or rolled back: edge-0 (failed)")

    report(devices[0], "failed")  # still the same failure: no new alert
    app.alert_pass()
    app.clock.offset = 200
    app.alert_pass()
    assert len(sink.deliveries) == 1
    report(devices[0], "healthy")
    report(devices[0], "failed")  # failed again after recovering: news, in a new window
    app.alert_pass()
    app.clock.offset = 270
    app.alert_pass()
    assert len(sink.deliveries) == 2
    assert sink.deliveries[1].json()["detail"]["count"] == 1
    assert len(set(sink.keys())) == 2


def test_an_unreachable_receiver_gets_the_alert_after_backoff_and_a_restart(
    start_app: Any, fleet_repo: Any, sink: AlertSink
) -> None:
    settings = {"alerts": [sink.receiver()], "alert_retry_seconds": 10.0}
    app = start_app(**settings)
    app.alert_pass()
    refuse_a_commit(app, fleet_repo)
    app.alert_pass()  # the receiver is down: connection refused
    [row] = app.outbox()
    assert (row.state, row.attempts) == ("pending", 1)
    assert "ConnectError" in (row.last_error or "")
    assert row.due_at - app.clock() == pytest.approx(10, abs=2)
    app.alert_pass()  # not due yet: no attempt
    assert app.outbox()[0].attempts == 1
    app.clock.offset = 11
    app.alert_pass()
    [row] = app.outbox()
    assert row.attempts == 2
    assert row.due_at - app.clock() == pytest.approx(20, abs=2)  # the delay doubled
    assert app.metric('kernex_alert_deliveries_total{result="retry"} 2.0')
    assert app.metric('kernex_alert_outbox{state="pending"} 1.0')

    start_app.stop(app)  # the server stops with the alert undelivered
    sink.start()
    again = start_app(**settings)
    again.clock.offset = 40
    again.alert_pass()
    again.alert_pass()
    [got] = sink.deliveries
    assert got.signed
    assert got.key == row.key
    [row] = again.outbox()
    assert (row.state, row.attempts) == ("delivered", 3)
    assert again.metric('kernex_alert_outbox{state="delivered"} 1.0')


def test_the_fleet_offline_alert_fires_once_per_episode(start_app: Any, sink: AlertSink) -> None:
    sink.start()
    app = start_app(alerts=[sink.receiver()], alert_offline_fraction=0.5)
    app.kx.alerter.started -= 3600  # long up: devices had the time to check in
    token = app.post("/v1/admin/enrollment-tokens", json={"max_uses": 2})["token"]
    for i in range(2):
        device = SimDevice(f"edge-{i}")
        assert device.enroll(app.client, token=token).status_code == 201
        assert device.manifest(app.client).status_code == 200  # online: it checked in
    app.alert_pass()
    assert sink.deliveries == []
    seen = app.kx.device_auth.last_seen
    for device_id in ("edge-0", "edge-1"):
        seen[device_id] = time.time() - 3600
    app.alert_pass()
    app.alert_pass()
    [got] = sink.deliveries
    assert got.key == "fleet.offline:1"
    assert got.json()["summary"] == "2 of 2 accepted devices are offline (threshold 50%)"
    seen["edge-0"] = time.time()  # 1 of 2 is not above half: the episode ends
    app.alert_pass()
    seen["edge-0"] = time.time() - 3600
    app.alert_pass()
    assert sink.keys() == ["fleet.offline:1", "fleet.offline:2"]


def test_alerts_test_sends_a_sample_and_reports_each_receiver(
    start_app: Any, sink: AlertSink
) -> None:
    down = AlertSink(secrets.token_hex(32))
    sink.start()
    app = start_app(alerts=[sink.receiver(), down.receiver("pager")])
    answer = app.post("/v1/admin/alerts/test", json={})
    outcomes = {d["receiver"]: d for d in answer["deliveries"]}
    assert outcomes["ops"]["state"] == "delivered"
    assert outcomes["ops"]["status"] == 200
    assert outcomes["pager"]["state"] == "failed"
    assert "ConnectError" in outcomes["pager"]["error"]
    [got] = sink.deliveries
    assert got.signed
    assert got.headers["kernex-event"] == "test"
    assert "test alert sent by ops-" in got.json()["summary"]

    only = app.post("/v1/admin/alerts/test", json={"receiver": "ops"})["deliveries"]
    assert [d["receiver"] for d in only] == ["ops"]
    missing = app.client.post(
        "/v1/admin/alerts/test", headers=app.auth, content=json.dumps({"receiver": "nope"})
    )
    assert missing.status_code == 404
    assert "ops" in missing.json()["hint"]
    shown = app.client.get("/v1/admin/alerts", headers=app.auth).json()
    assert [r["name"] for r in shown["receivers"]] == ["ops", "pager"]
    assert shown["receivers"][0]["url"] == f"http://127.0.0.1:{sink.port}"  # never the path
    assert shown["outbox"] == {"pending": 0, "delivered": 2, "failed": 1}
    audit = app.client.get("/v1/admin/audit?action=alerts.test", headers=app.auth).json()
    assert len(audit["entries"]) == 3


def test_without_receivers_the_test_says_how_to_add_one(start_app: Any) -> None:
    app = start_app()
    answer = app.client.post("/v1/admin/alerts/test", headers=app.auth)
    assert answer.status_code == 409
    assert "[[alerts]]" in answer.json()["hint"]


def test_halts_from_before_the_first_pass_are_history(start_app: Any, sink: AlertSink) -> None:
    sink.start()
    app = start_app(alerts=[sink.receiver()])

    def halted_rollout(at: float) -> int:
        with app.kx.store.sessions.begin() as s:
            row = Rollout(
                group="stable", revision="c" * 40, policy={"waves": ["100%"]}, state="halted",
                wave_started_at=at, created_at=at, updated_at=at, reason="2 of 2 failed",
            )  # fmt: skip
            s.add(row)
            s.flush()
            return int(row.id)

    halted_rollout(time.time() - 86400)  # halted yesterday, before alerts were set up
    app.alert_pass()
    assert sink.deliveries == []
    new = halted_rollout(time.time())
    app.alert_pass()
    app.alert_pass()
    [got] = sink.deliveries
    assert got.key.startswith(f"rollout.halted:{new}:")
    assert got.json()["summary"] == f"rollout {new} of group stable halted: 2 of 2 failed"


def test_a_failing_reconcile_alerts_once_per_run_of_failures(
    start_app: Any, fleet_repo: Any, sink: AlertSink
) -> None:
    sink.start()
    app = start_app(alerts=[sink.receiver()])
    app.alert_pass()
    git_dir, away = fleet_repo.path / ".git", fleet_repo.path / "git-away"

    def reconcile_pass() -> None:
        app.client.portal.call(app.kx.reconcile_once)  # type: ignore[union-attr]

    git_dir.rename(away)  # the repository is gone: every pass fails
    for _ in range(2):
        reconcile_pass()
        app.alert_pass()
    assert app.kx.last_reconcile_error
    [got] = sink.deliveries
    assert got.headers["kernex-event"] == "reconcile.failed"
    assert got.json()["summary"].startswith("the server cannot reconcile the fleet repository: ")
    away.rename(git_dir)  # back: the run of failures ends
    reconcile_pass()
    app.alert_pass()
    assert app.kx.last_reconcile_error is None
    git_dir.rename(away)  # a new run of failures: a new alert
    reconcile_pass()
    app.alert_pass()
    assert [d.headers["kernex-event"] for d in sink.deliveries] == ["reconcile.failed"] * 2
    assert len(set(sink.keys())) == 2


def test_a_delivery_pass_stopped_midway_settles_the_send_in_flight_and_frees_the_rest(
    start_app: Any, fleet_repo: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server stopping while a receiver hangs lets the send in flight end (bounded by the
    send timeout) and records it; the rows it claimed and never tried are due again at once,
    not after their lease, so the next process sends them without waiting."""
    monkeypatch.setattr(alerts, "SEND_TIMEOUT", 1.0)
    with socket.socket() as hang:  # accepts connections and never answers
        hang.bind(("127.0.0.1", 0))
        hang.listen(8)
        url = f"http://127.0.0.1:{hang.getsockname()[1]}/hook"
        app = start_app(alerts=[{"name": "slow", "url": url, "secret": secrets.token_hex(32)}])
        app.alert_pass()
        refuse_a_commit(app, fleet_repo)
        fleet_repo.write("kernex.yaml", "apiVersion: kernex/v1\nname: [still, broken]\n")
        fleet_repo.commit("another broken kernex.yaml")
        assert app.post("/v1/admin/reconcile")["state"] == "invalid"
        app.client.portal.call(anyio.to_thread.run_sync, app.kx.alerter.find)  # type: ignore[union-attr]
        assert len(app.outbox()) == 2

        async def stopped_midway() -> None:
            with anyio.move_on_after(0.3):
                await app.kx.alerter.deliver_due()

        app.client.portal.call(stopped_midway)  # type: ignore[union-attr]
        first, second = app.outbox()
        assert (first.state, first.attempts, first.claimed_until) == ("pending", 1, None)
        assert "Timeout" in (first.last_error or "")
        assert (second.state, second.attempts, second.claimed_until) == ("pending", 0, None)
