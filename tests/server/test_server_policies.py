"""`offline_after` and `manifest_ttl`: server.toml's values hold unless the fleet's
kernex.yaml sets `policies.*`; and a device that stops making requests goes offline once
`offline_after` has passed (real app, real database, real Git repository)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from kit.device import SimDevice, verify_manifest
from kit.fleet import FleetRepo, kernex_yaml
from starlette.testclient import TestClient

from kernex_core import keys
from kernex_server.app import create_app


class Clock:
    """Real time plus an offset the test moves forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


class Running:
    def __init__(self, client: TestClient, token: str, clock: Clock) -> None:
        self.client, self.token, self.clock = client, token, clock

    def get(self, path: str) -> Any:
        response = self.client.get(path, headers={"Authorization": f"Bearer {self.token}"})
        assert response.status_code == 200, response.text
        return response.json()

    def post(self, path: str, status: int = 200) -> Any:
        response = self.client.post(path, headers={"Authorization": f"Bearer {self.token}"})
        assert response.status_code == status, response.text
        return response.json()


@pytest.fixture
def start(make_settings: Any, manifest_key: keys.PrivateKey) -> Iterator[Any]:
    clients: list[TestClient] = []

    def run(**settings: Any) -> Running:
        clock = Clock()
        app = create_app(
            make_settings(**settings), manifest_key=manifest_key, background=False, clock=clock
        )
        client = TestClient(app)
        client.__enter__()
        clients.append(client)
        token = app.state.kx.store.create_api_token("ops", "admin", now=time.time())
        return Running(client, token, clock)

    yield run
    for client in reversed(clients):
        client.__exit__(None, None, None)


def enroll(server: Running, device_id: str) -> SimDevice:
    token = server.post("/v1/admin/enrollment-tokens", status=201)["token"]
    device = SimDevice(device_id, labels={"ring": "stable"})
    assert device.enroll(server.client, token=token).status_code == 201
    return device


def validity(server: Running, device: SimDevice, key: keys.PrivateKey) -> int:
    response = device.manifest(server.client)
    assert response.status_code == 200, response.text
    m = verify_manifest(response.content, device.device_id, key)
    return m.expires_at - m.issued_at


def online(server: Running, device_id: str) -> bool:
    shown: bool = server.get(f"/v1/admin/devices/{device_id}")["online"]
    return shown


def with_policies(repo: FleetRepo, policies: str, greeting: str = "hello") -> None:
    repo.write("kernex.yaml", kernex_yaml(greeting=greeting) + policies)
    repo.commit("fleet policies")


def test_server_toml_values_hold_when_the_fleet_sets_no_policies(
    start: Any, fleet_repo: FleetRepo, manifest_key: keys.PrivateKey
) -> None:
    server = start(offline_after=60, manifest_ttl=3600)  # deploys the head at start
    device = enroll(server, "edge-1")
    assert validity(server, device, manifest_key) == 3600  # not the fleet's 7-day default

    assert online(server, "edge-1")
    server.clock.offset = 50
    assert online(server, "edge-1")
    assert server.get("/v1/admin/status")["devices"]["offline"] == 0
    # It stops making requests: 60 s (server.toml) after its last one it is offline.
    server.clock.offset = 61
    assert not online(server, "edge-1")
    status = server.get("/v1/admin/status")["devices"]
    assert (status["online"], status["offline"]) == (0, 1)
    listed = server.get("/v1/admin/devices?online=false")["devices"]
    assert [d["id"] for d in listed] == ["edge-1"]

    # A request brings it back online.
    server.clock.offset = 0
    assert device.manifest(server.client).status_code == 200
    assert online(server, "edge-1")


def test_the_fleet_policies_override_the_server_only_when_set(
    start: Any, fleet_repo: FleetRepo, manifest_key: keys.PrivateKey
) -> None:
    with_policies(fleet_repo, "policies:\n  offline_after: 2m\n  manifest_ttl: 1d\n")
    server = start(offline_after=60, manifest_ttl=3600)  # deploys the head at start
    device = enroll(server, "edge-1")
    assert validity(server, device, manifest_key) == 86400
    server.clock.offset = 90
    assert online(server, "edge-1")  # the fleet's 2m, not the server's 60 s
    server.clock.offset = 121
    assert not online(server, "edge-1")

    # Only one of them set: the other is the server's again.
    server.clock.offset = 0
    with_policies(fleet_repo, "policies:\n  offline_after: 2m\n", greeting="again")
    assert server.post("/v1/admin/reconcile")["state"] == "deployed"
    assert validity(server, device, manifest_key) == 3600  # a new manifest, server's TTL
    server.clock.offset = 90
    assert online(server, "edge-1")
