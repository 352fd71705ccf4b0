"""Attacks on the server from the network, from admitted devices and from low-role tokens.

Each test names the attack; every refusal also checks that nothing was stored.
"""

from __future__ import annotations

from typing import Any

from serverkit import SimDevice


def enrolled(server: Any, device_id: str = "dev-1") -> SimDevice:
    device = SimDevice(device_id)
    assert device.enroll(server.client, token=server.enrollment_token()).status_code == 201
    return device


def signed_enroll(server: Any, device: SimDevice, body: bytes) -> Any:
    headers = {**device.headers("POST", "/v1/enroll", body), "Content-Type": "application/json"}
    return server.client.post("/v1/enroll", content=body, headers=headers)


def test_deeply_nested_json_is_400_not_500(server: Any) -> None:
    body = b"[" * 100_000 + b"]" * 100_000
    response = server.client.post("/v1/enroll", content=body)
    assert response.status_code == 400, response.text
    assert "JSON" in response.json()["error"]
    device = enrolled(server)
    path = "/v1/devices/dev-1/status"
    nested = b'{"phase": "healthy", "bundles": ' + b'{"a":' * 40_000 + b"1" + b"}" * 40_001
    response = server.client.post(
        path, content=nested, headers=device.headers("POST", path, nested)
    )
    assert response.status_code in (400, 422), response.text
    assert server.kx.store.status_history("dev-1") == []
