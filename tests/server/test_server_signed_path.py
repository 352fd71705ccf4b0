"""`@path` of a signed device request is the path as the device sent it (RFC 9421 section
2.2.6): percent-encoding untouched, and with the prefix a proxy strips when the server
runs under a path (`kernex server run --root-path /kernex`)."""

from __future__ import annotations

import json
from typing import Any

from kit.device import SimDevice
from starlette.testclient import TestClient

BODY = json.dumps({"phase": "healthy", "serial": 1}).encode()


def enrolled(server: Any, device_id: str = "dev-1") -> SimDevice:
    device = SimDevice(device_id)
    assert device.enroll(server.client, token=server.enrollment_token()).status_code == 201
    return device


def test_a_percent_encoded_path_is_verified_as_sent(server: Any) -> None:
    device = enrolled(server)
    raw = "/v1/devices/dev%2D1/status"  # the same resource, spelled with an escape
    sent = server.client.post(raw, content=BODY, headers=device.headers("POST", raw, BODY))
    assert sent.status_code == 204, sent.text
    decoded = "/v1/devices/dev-1/status"  # signed over another spelling than the one sent
    wrong = server.client.post(raw, content=BODY, headers=device.headers("POST", decoded, BODY))
    assert wrong.status_code == 401, wrong.text


def test_devices_sign_the_public_path_under_a_prefix(server: Any) -> None:
    """Behind a proxy that maps https://host/kernex/ to the server, started with
    --root-path /kernex: the device signs /kernex/v1/..., the path it requested."""
    device = enrolled(server)
    with TestClient(server.client.app, root_path="/kernex") as prefixed:
        path = "/kernex/v1/devices/dev-1/status"
        sent = prefixed.post(path, content=BODY, headers=device.headers("POST", path, BODY))
        assert sent.status_code == 204, sent.text
        bare = "/v1/devices/dev-1/status"  # signed without the prefix it was sent under
        wrong = prefixed.post(path, content=BODY, headers=device.headers("POST", bare, BODY))
        assert wrong.status_code == 401, wrong.text
