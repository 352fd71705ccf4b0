"""A 204 for a status report means the report is in the database: a real server process
receiving reports from many devices at once is killed with SIGKILL mid-stream, started
again, and every report it acknowledged is found in the database; a staged rollout whose
wave was promoted by acknowledged reports completes across the kill."""

from __future__ import annotations

import base64
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from kit.admin import admin
from kit.device import SimDevice
from kit.fleet import FleetRepo, kernex_yaml
from kit.wait import wait_for

from kernex_cli.localserver import LocalServer

pytestmark = pytest.mark.e2e
DEVICES = 16


class Server(LocalServer):
    """`kernex server run` with the history long enough to hold every report of the test
    and the device rate limit off; it restarts on the same port, also after a SIGKILL."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.fleet = FleetRepo(tmp_path / "fleet")
        super().__init__(
            tmp_path / "data",
            repo=self.fleet.path,
            settings={"status_history": 100000, "device_rate": 0},
        )

    @property
    def base(self) -> str:
        return self.base_url

    @property
    def token(self) -> str:
        return self.admin_token

    @property
    def data(self) -> Path:
        return self.data_dir

    def kill(self) -> None:
        proc, self.proc = self.proc, None
        assert proc is not None
        proc.kill()
        proc.wait(timeout=15)


@pytest.fixture
def server_proc(tmp_path: Path) -> Iterator[Server]:
    with Server(tmp_path) as srv:
        yield srv


def test_every_acknowledged_report_survives_sigkill(server_proc: Server) -> None:
    devices = [SimDevice(f"dev-{n:02d}") for n in range(DEVICES)]
    with httpx.Client(base_url=server_proc.base, timeout=30) as client:
        made = client.post(
            "/v1/admin/enrollment-tokens",
            json={"max_uses": DEVICES},
            headers=admin(server_proc.token),
        )
        assert made.status_code == 201, made.text
        for device in devices:
            answer = device.enroll(client, token=made.json()["token"])
            assert answer.status_code == 201, answer.text

    acknowledged: list[tuple[str, str]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def send(device: SimDevice) -> int:
        sent = 0
        with httpx.Client(base_url=server_proc.base, timeout=10) as client:
            while not stop.is_set():
                marker = f"{device.device_id}/{sent}"
                report = {"phase": "healthy", "serial": 1, "log_tail": marker}
                try:
                    answer = device.status(client, report)
                except httpx.TransportError:
                    return sent  # the server is gone
                sent += 1
                if answer.status_code == 204:
                    with lock:
                        acknowledged.append((device.device_id, marker))
        return sent

    with ThreadPoolExecutor(DEVICES) as pool:
        senders = [pool.submit(send, d) for d in devices]
        deadline = time.monotonic() + 30
        while len(acknowledged) < 200 and time.monotonic() < deadline:
            time.sleep(0.02)
        server_proc.kill()  # mid-stream: reports are arriving as it dies
        stop.set()
        for sender in senders:
            sender.result(timeout=30)
    assert len(acknowledged) >= 200, "the server acknowledged too few reports to test"

    server_proc.start()  # recovers the database after the crash
    with httpx.Client(base_url=server_proc.base, timeout=30) as client:
        listed = client.get("/v1/admin/devices", headers=admin(server_proc.token))
        assert listed.status_code == 200
        assert {d["id"] for d in listed.json()["devices"]} == {d.device_id for d in devices}
    db = sqlite3.connect(server_proc.data / "kernex.db")
    try:
        stored = set(db.execute("SELECT device_id, log_tail FROM status_reports"))
    finally:
        db.close()
    lost = [a for a in acknowledged if a not in stored]
    assert not lost, f"{len(lost)} of {len(acknowledged)} acknowledged reports were lost"


def served(client: httpx.Client, device: SimDevice) -> tuple[int, str]:
    """(serial, app version) of the device's current manifest, read from its envelope."""
    answer = device.manifest(client)
    assert answer.status_code == 200, answer.text
    doc = json.loads(base64.b64decode(json.loads(answer.content)["payload"]))
    return doc["serial"], doc["bundles"][0]["version"]


def rollout_of(client: httpx.Client, server: Server, commit: str) -> dict[str, Any] | None:
    rows = client.get("/v1/admin/rollouts", headers=admin(server.token)).json()["rollouts"]
    return next((r for r in rows if r["revision"] == commit), None)


def test_a_staged_rollout_completes_across_a_sigkill(server_proc: Server) -> None:
    """The reports that promote a wave are acknowledged, the server is killed before the
    next wave, and after a restart the rollout still completes: no acknowledged report that
    it counts on is gone."""
    devices = [SimDevice(f"dev-{n:02d}") for n in range(6)]
    repo = server_proc.fleet
    with httpx.Client(base_url=server_proc.base, timeout=30) as client:
        auth = admin(server_proc.token)
        made = client.post("/v1/admin/enrollment-tokens", json={"max_uses": 6}, headers=auth)
        assert made.status_code == 201, made.text
        for device in devices:
            assert device.enroll(client, token=made.json()["token"]).status_code == 201
            serial, version = served(client, device)
            assert version == "1.0.0"
            report = {"phase": "healthy", "serial": serial}
            assert device.status(client, report).status_code == 204

        repo.write(
            "kernex.yaml",
            kernex_yaml("1.1.0")
            + "rollout:\n  waves: [50%, 100%]\n  failure_threshold: 0%\n  pause: 1s\n",
        )
        commit = repo.commit("app 1.1.0 in two waves")
        assert client.post("/v1/admin/reconcile", headers=auth).status_code in (200, 202)

        wait_for("the rollout to start", lambda: rollout_of(client, server_proc, commit))
        first_wave = [d for d in devices if served(client, d)[1] == "1.1.0"]
        assert 0 < len(first_wave) < len(devices)
        for device in first_wave:  # every one acknowledged: the wave is ready
            report = {"phase": "healthy", "serial": served(client, device)[0]}
            assert device.status(client, report).status_code == 204

    server_proc.kill()
    server_proc.start()
    with httpx.Client(base_url=server_proc.base, timeout=30) as client:
        # the acknowledged reports promote the first wave; the rest then take 1.1.0
        def on_new_version() -> bool:
            return all(served(client, d)[1] == "1.1.0" for d in devices)

        wait_for("the second wave", on_new_version, timeout=60)
        for device in devices:
            report = {"phase": "healthy", "serial": served(client, device)[0]}
            assert device.status(client, report).status_code == 204

        def completed() -> bool:
            found = rollout_of(client, server_proc, commit)
            return found is not None and found["state"] == "completed"

        wait_for("the rollout to complete", completed)
