"""End to end: a rollout halts while the alert receiver is down; the server restarts; the
receiver comes back and gets the halt exactly once, with a valid signature.

Real parts throughout: uvicorn serving the app on 127.0.0.1 with its background loops
(status batches, rollout evaluation, the alert loop), a real Git repository, SQLite or
PostgreSQL, signed device requests over HTTP, and an HTTP receiver on loopback."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from kit.alertsink import AlertSink
from kit.device import SimDevice, verify_manifest
from kit.fleet import FleetRepo, kernex_yaml
from kit.wait import wait_for

from kernex_core import keys
from kernex_server.app import create_app
from kernex_server.settings import Settings

pytestmark = pytest.mark.e2e

STAGED = (
    "selector: ring=stable\npriority: 5\nrollout:\n  waves: [20%, 100%]\n"
    "  failure_threshold: 10%\n  auto_rollback: true\n"
)


class Uvicorn:
    """The app under uvicorn in a thread, on a port that stays the same across restarts."""

    def __init__(self, settings: Settings, key: keys.PrivateKey) -> None:
        self.settings, self.key = settings, key
        self.server: uvicorn.Server | None = None
        self.thread: threading.Thread | None = None
        self.port = 0

    def start(self) -> Any:
        app = create_app(self.settings, manifest_key=self.key)
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", ws="none",
            access_log=False,
        )  # fmt: skip
        self.server = server = uvicorn.Server(config)
        self.thread = threading.Thread(target=server.run, daemon=True)
        self.thread.start()
        wait_for("uvicorn to start", lambda: server.started or not self.thread.is_alive())  # type: ignore[union-attr]
        assert server.started, "the server did not start"
        self.port = server.servers[0].sockets[0].getsockname()[1]
        return app.state.kx

    def stop(self) -> None:
        if self.server is not None and self.thread is not None:
            self.server.should_exit = True
            self.thread.join(timeout=30)
            self.server = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
def sink() -> Iterator[AlertSink]:
    s = AlertSink(secrets.token_hex(32))
    yield s
    s.stop()


def test_a_halt_while_the_receiver_is_down_arrives_once_signed_after_a_restart(
    make_settings: Any, manifest_key: keys.PrivateKey, fleet_repo: FleetRepo, sink: AlertSink
) -> None:
    fleet_repo.write("groups/stable.yaml", STAGED)
    fleet_repo.commit("stable devices get changes in two waves")
    settings = make_settings(
        alerts=[sink.receiver()],
        alert_interval=0.2,
        alert_retry_seconds=0.2,
        alert_retry_max_seconds=1.0,
        alert_group_seconds=0.5,
        status_flush_interval=0.1,
        rollout_interval=0.2,
        heartbeat_flush_interval=0.2,
    )
    server = Uvicorn(settings, manifest_key)
    kx = server.start()
    token = kx.store.create_api_token("ops", "admin", now=time.time())
    auth = {"Authorization": f"Bearer {token}"}
    client = httpx.Client(base_url=server.base, timeout=30)
    try:
        enroll = client.post("/v1/admin/enrollment-tokens", headers=auth, json={"max_uses": 10})
        devices = [SimDevice(f"stable-{i:02d}", labels={"ring": "stable"}) for i in range(10)]
        for d in devices:
            assert d.enroll(client, token=enroll.json()["token"]).status_code == 201

        def manifests() -> dict[str, Any]:
            return {
                d.device_id: verify_manifest(d.manifest(client).content, d.device_id, manifest_key)
                for d in devices
            }

        for d, m in zip(devices, manifests().values(), strict=True):
            assert d.status(client, {"phase": "healthy", "serial": m.serial}).status_code == 204

        fleet_repo.write("kernex.yaml", kernex_yaml(version="1.1.0"))
        commit = fleet_repo.commit("app 1.1.0")
        assert client.post("/v1/admin/reconcile", headers=auth).json()["state"] == "deployed"
        canaries = {k: m for k, m in manifests().items() if m.bundles[0].version == "1.1.0"}
        assert len(canaries) == 2
        first = next(d for d in devices if d.device_id in canaries)
        report = {"phase": "failed", "serial": canaries[first.device_id].serial, "error": "boom"}
        assert first.status(client, report).status_code == 204

        def halted() -> Any:
            rows = client.get("/v1/admin/rollouts?state=halted", headers=auth).json()["rollouts"]
            return next((r for r in rows if r["revision"] == commit), None)

        rollout = wait_for("the rollout to halt", halted)

        def tried_and_waiting() -> Any:
            recent = client.get("/v1/admin/alerts", headers=auth).json()["recent"]
            return next(
                (a for a in recent if a["kind"] == "rollout.halted" and a["attempts"] >= 2), None
            )

        row = wait_for("the halt alert to fail twice", tried_and_waiting)
        assert row["state"] == "pending"
        assert "ConnectError" in row["last_error"]
        assert f"rollout {rollout['id']} of group stable halted" in row["summary"]
        assert sink.deliveries == []
    finally:
        server.stop()  # the server goes down with the alert still undelivered

    sink.start()  # the receiver comes back while the server is down
    kx = server.start()  # a new process would read the same database: the outbox is there
    try:
        got = wait_for("the halt alert", lambda: sink.of_kind("rollout.halted"))

        def settled() -> bool:
            shown = client.get("/v1/admin/alerts", headers=auth).json()
            return shown["outbox"]["pending"] == 0

        wait_for("every alert delivered", settled)
        passes = kx.alerter.passes
        wait_for("five more alert passes", lambda: kx.alerter.passes >= passes + 5)
        halts = sink.of_kind("rollout.halted")
        assert len(halts) == 1, [d.key for d in halts]
        [delivery] = halts
        assert delivery is got[0]
        assert delivery.signed  # HMAC-SHA256 over timestamp.body under the receiver's secret
        assert delivery.key == row["key"]
        assert delivery.key.startswith(f"rollout.halted:{rollout['id']}:")
        doc = delivery.json()
        assert doc["id"] == delivery.key
        assert doc["detail"]["rollout"] == rollout["id"]
        assert doc["detail"]["revision"] == commit
        assert "1 of 2 admitted devices failed" in doc["detail"]["reason"]
        assert len(sink.keys()) == len(set(sink.keys()))  # no alert of any kind twice
        failed = sink.of_kind("devices.failed")
        assert [d.json()["detail"]["devices"][0]["device"] for d in failed] == [first.device_id]
        metrics = client.get("/metrics").text
        assert 'kernex_alert_outbox{state="pending"} 0.0' in metrics
        assert 'kernex_alert_outbox{state="delivered"} 2.0' in metrics
    finally:
        client.close()
        server.stop()
