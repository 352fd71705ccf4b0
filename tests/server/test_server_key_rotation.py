"""The server side of key rotation, in process: its refusals and what manifests carry.
The whole path through agent processes is tests/e2e/test_key_rotation_e2e.py."""

from __future__ import annotations

import json
import time
from typing import Any

from kit.admin import admin
from kit.device import SimDevice

from kernex_core import keys
from kernex_core.envelope import Envelope, sign_envelope
from kernex_core.manifest import Manifest
from kernex_core.release import RELEASE_KEYS_PAYLOAD_TYPE, ReleaseKeySet


def payload(raw: bytes) -> Manifest:
    return Manifest.from_dict(json.loads(Envelope.from_json(raw).payload))


def release_set(version: int, signer: keys.PrivateKey, *new: keys.PrivateKey) -> Any:
    rset = ReleaseKeySet(
        version=version, keys={keys.fingerprint(k.public_key()): k.public_key() for k in new}
    )
    body = json.dumps(rset.to_dict()).encode()
    kid = keys.fingerprint(signer.public_key())
    return sign_envelope(RELEASE_KEYS_PAYLOAD_TYPE, body, {kid: signer}).to_dict()


def test_manifest_key_rotation_waits_for_every_accepted_device(server: Any) -> None:
    device = SimDevice("dev-1")
    assert device.enroll(server.client, token=server.enrollment_token()).status_code == 201
    old_id = keys.fingerprint(server.key.public_key())
    first = device.manifest(server.client)
    assert [k for k, _ in payload(first.content).manifest_keys] == [old_id]

    viewer = server.kx.store.create_api_token("a-viewer", "viewer", now=time.time())
    assert server.client.get("/v1/admin/keys", headers=admin(viewer)).status_code == 200
    denied = server.client.post("/v1/admin/keys/manifest/rotate", headers=admin(viewer))
    assert denied.status_code == 403
    not_started = server.client.post("/v1/admin/keys/manifest/finish", headers=server.auth)
    assert not_started.status_code == 409

    started = server.admin_post("/v1/admin/keys/manifest/rotate")
    new_id = started["rotation"]["next_key_id"]
    assert started["rotation"]["devices_not_moved"] == ["dev-1"]
    again = server.client.post("/v1/admin/keys/manifest/rotate", headers=server.auth)
    assert again.status_code == 409
    announcing = device.manifest(server.client)
    manifest = payload(announcing.content)
    assert [k for k, _ in manifest.manifest_keys] == [old_id, new_id]
    assert manifest.serial > payload(first.content).serial  # a new serial: devices report it
    assert Envelope.from_json(announcing.content).signatures[0].keyid == old_id  # still old

    waiting = server.client.post("/v1/admin/keys/manifest/finish", headers=server.auth)
    assert waiting.status_code == 409
    assert "dev-1" in waiting.json()["error"]
    report = device.status(server.client, {"phase": "healthy", "serial": manifest.serial})
    assert report.status_code == 204
    finished = server.admin_post("/v1/admin/keys/manifest/finish")
    assert finished["retired_key_id"] == old_id
    assert finished["manifest_key_id"] == new_id
    after = device.manifest(server.client)
    assert Envelope.from_json(after.content).signatures[0].keyid == new_id
    assert [k for k, _ in payload(after.content).manifest_keys] == [new_id]
    actions = [e["action"] for e in server.admin_get("/v1/admin/audit")["entries"]]
    assert "keys.manifest.rotate" in actions
    assert "keys.manifest.finish" in actions


def test_a_release_key_set_must_be_signed_by_the_one_the_server_holds(server: Any) -> None:
    first, second, stranger = (keys.generate_ed25519() for _ in range(3))
    put = "/v1/admin/keys/release"
    held = server.client.put(put, json=release_set(1, first, second), headers=server.auth)
    assert held.status_code == 200, held.text
    assert held.json()["release_keys"]["version"] == 1
    forged = server.client.put(put, json=release_set(2, stranger, stranger), headers=server.auth)
    assert forged.status_code == 400
    assert "release-key set refused" in forged.json()["error"]
    stale = server.client.put(put, json=release_set(1, second, first), headers=server.auth)
    assert stale.status_code == 400
    newer = server.client.put(put, json=release_set(2, second, first), headers=server.auth)
    assert newer.status_code == 200, newer.text
    device = SimDevice("dev-2")
    assert device.enroll(server.client, token=server.enrollment_token()).status_code == 201
    carried = payload(device.manifest(server.client).content).release_keys
    assert carried is not None
    assert ReleaseKeySet.from_dict(json.loads(Envelope.from_dict(carried).payload)).version == 2
