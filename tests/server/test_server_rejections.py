"""Every refusal of the device plane, each asserting that nothing changed."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from kit.device import SimDevice

from kernex_core import keys


def enrolled(server: Any, device_id: str = "dev-1") -> SimDevice:
    device = SimDevice(device_id)
    assert device.enroll(server.client, token=server.enrollment_token()).status_code == 201
    return device


def manifest_path(device: SimDevice) -> str:
    return f"/v1/devices/{device.device_id}/manifest"


def test_unsigned_request_is_401(server: Any) -> None:
    device = enrolled(server)
    response = server.client.get(manifest_path(device))
    assert response.status_code == 401
    assert "not signed" in response.json()["error"]


def test_bad_signature_is_401(server: Any) -> None:
    device = enrolled(server)
    headers = device.headers("GET", manifest_path(device))
    label, _, value = headers["Signature"].partition("=:")
    raw = bytearray(base64.b64decode(value.rstrip(":")))
    raw[0] ^= 1
    headers["Signature"] = f"{label}=:{base64.b64encode(bytes(raw)).decode()}:"
    response = server.client.get(manifest_path(device), headers=headers)
    assert response.status_code == 401
    assert "does not verify" in response.json()["error"]


def test_signature_by_another_key_is_401(server: Any) -> None:
    enrolled(server)
    impostor = SimDevice("dev-1")  # same id, a key of its own
    response = impostor.manifest(server.client)
    assert response.status_code == 401


def test_signature_over_another_path_is_401(server: Any) -> None:
    device = enrolled(server)
    headers = device.headers("GET", "/v1/devices/dev-1/status")
    assert server.client.get(manifest_path(device), headers=headers).status_code == 401


def test_replayed_request_is_401(server: Any) -> None:
    device = enrolled(server)
    headers = device.headers("GET", manifest_path(device))
    assert server.client.get(manifest_path(device), headers=headers).status_code == 200
    replay = server.client.get(manifest_path(device), headers=headers)
    assert replay.status_code == 401
    assert "replay" in replay.json()["error"]


def test_stale_created_is_401(server: Any) -> None:
    device = enrolled(server)
    device.created = int(time.time()) - 301
    stale = device.manifest(server.client)
    assert stale.status_code == 401
    assert "clock" in stale.json()["hint"].lower()
    device.created = int(time.time()) + 400  # from the future, too
    assert device.manifest(server.client).status_code == 401


def test_digest_mismatch_is_401_and_stores_nothing(server: Any) -> None:
    device = enrolled(server)
    path = "/v1/devices/dev-1/status"
    headers = device.headers("POST", path, b'{"phase":"healthy"}')
    response = server.client.post(path, content=b'{"phase":"failed"}', headers=headers)
    assert response.status_code == 401
    assert "Content-Digest" in response.json()["error"]
    assert server.kx.store.current_status("dev-1") is None


def test_other_devices_manifest_and_status_are_403(server: Any) -> None:
    mine = enrolled(server, "dev-1")
    enrolled(server, "dev-2")
    other = "/v1/devices/dev-2/manifest"
    assert mine.get(server.client, other).status_code == 403
    path = "/v1/devices/dev-2/status"
    body = b'{"phase":"failed","error":"forged"}'
    response = server.client.post(path, content=body, headers=mine.headers("POST", path, body))
    assert response.status_code == 403
    assert server.kx.store.current_status("dev-2") is None


def test_revoked_device_is_403_everywhere(server: Any) -> None:
    device = enrolled(server)
    assert device.manifest(server.client).status_code == 200
    server.admin_post("/v1/admin/devices/dev-1/revoke")
    assert device.manifest(server.client).status_code == 403
    assert device.status(server.client, {"phase": "healthy"}).status_code == 403
    again = device.enroll(server.client, token=server.enrollment_token())
    assert again.status_code == 200
    assert again.json()["state"] == "revoked"  # a token does not undo a revocation
    refused = server.client.post("/v1/admin/devices/dev-1/accept", headers=server.auth)
    assert refused.status_code == 409


def test_rejected_and_pending_devices_are_403(server: Any) -> None:
    pending = SimDevice("dev-p")
    assert pending.enroll(server.client).json()["state"] == "pending"
    assert pending.manifest(server.client).status_code == 403
    server.admin_post("/v1/admin/devices/dev-p/reject")
    assert pending.manifest(server.client).status_code == 403


def test_duplicate_id_with_another_key_is_409(server: Any) -> None:
    device = enrolled(server)
    thief = SimDevice("dev-1")
    response = thief.enroll(server.client, token=server.enrollment_token())
    assert response.status_code == 409
    assert "another key" in response.json()["error"]
    stored = server.kx.store.get_device("dev-1")
    assert stored.fingerprint == device.fingerprint()
    assert device.manifest(server.client).status_code == 200  # the owner is unaffected


def test_same_key_again_is_idempotent(server: Any) -> None:
    device = SimDevice("dev-1")
    assert device.enroll(server.client).status_code == 201
    again = device.enroll(server.client)
    assert again.status_code == 200
    assert again.json()["state"] == "pending"
    # the same key with a token completes the admission
    assert device.enroll(server.client, token=server.enrollment_token()).json()["state"] == (
        "accepted"
    )
    assert len(server.admin_get("/v1/admin/devices")["devices"]) == 1


def test_enrollment_must_be_signed_by_the_enrolled_key(server: Any) -> None:
    device = SimDevice("dev-1")
    other = SimDevice("dev-1")
    body = device.enroll_body()
    headers = other.headers("POST", "/v1/enroll", body)  # possession of another key
    response = server.client.post("/v1/enroll", content=body, headers=headers)
    assert response.status_code == 401
    assert server.kx.store.get_device("dev-1") is None
    assert server.client.post("/v1/enroll", content=body).status_code == 401


def test_enrollment_token_limits(server: Any) -> None:
    once = server.enrollment_token(max_uses=1)
    assert SimDevice("a-1").enroll(server.client, token=once).json()["state"] == "accepted"
    used_up = SimDevice("a-2").enroll(server.client, token=once)
    assert used_up.status_code == 403
    assert server.kx.store.get_device("a-2") is None
    assert SimDevice("a-3").enroll(server.client, token="kxe_made_up").status_code == 403
    revoked = server.admin_post("/v1/admin/enrollment-tokens", json={"name": "r"})
    deleted = server.client.delete(
        f"/v1/admin/enrollment-tokens/{revoked['id']}", headers=server.auth
    )
    assert deleted.status_code == 204
    assert SimDevice("a-4").enroll(server.client, token=revoked["token"]).status_code == 403
    listed = server.admin_get("/v1/admin/enrollment-tokens")["tokens"]
    assert {t["name"] for t in listed} >= {"r", "enrollment"}
    assert all("token" not in t and "token_hash" not in t for t in listed)


def test_expired_enrollment_token(server: Any) -> None:
    token = server.enrollment_token(expires_in=60)
    later = time.time() + 120
    server.kx.clock = server.kx.device_auth.clock = lambda: later
    device = SimDevice("dev-1", created=int(later))
    response = device.enroll(server.client, token=token)
    assert response.status_code == 403
    assert "expired" in response.json()["error"]
    assert server.kx.store.get_device("dev-1") is None


def test_bad_enrollments_are_400(server: Any) -> None:
    bad_id = SimDevice("Bad ID!")
    body = bad_id.enroll_body()
    response = server.client.post(
        "/v1/enroll", content=body, headers=bad_id.headers("POST", "/v1/enroll", body)
    )
    assert response.status_code == 400
    assert "device id" in response.json()["error"]
    weak = SimDevice("dev-rsa")
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - the weak key must be refused
    body = json.dumps(
        {"device_id": "dev-rsa", "public_key": keys.public_key_to_pem(small.public_key())}
    ).encode()
    response = server.client.post(
        "/v1/enroll", content=body, headers=weak.headers("POST", "/v1/enroll", body)
    )
    assert response.status_code == 400
    assert "too small" in response.json()["error"]
    assert server.client.post("/v1/enroll", content=b"{not json").status_code == 400


def test_ecdsa_and_rsa_devices_enroll(server: Any) -> None:
    token = server.enrollment_token()
    for device_id, key in (
        ("ec-1", ec.generate_private_key(ec.SECP256R1())),
        ("rsa-1", rsa.generate_private_key(public_exponent=65537, key_size=2048)),
    ):
        device = SimDevice(device_id, key=key)
        assert device.enroll(server.client, token=token).json()["state"] == "accepted"
        assert device.manifest(server.client).status_code == 200
        assert server.kx.store.get_device(device_id).algorithm == keys.algorithm_of(key)


def test_oversized_status_is_413(start_server: Any) -> None:
    server = start_server(max_body_bytes=1024)
    device = enrolled(server)
    report = {"phase": "failed", "error": "x" * 2000}
    assert device.status(server.client, report).status_code == 413
