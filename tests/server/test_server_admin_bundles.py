"""Admin access, bundle store and download, fingerprint admission, re-signing."""

from __future__ import annotations

import time
from typing import Any

from kit.device import SimDevice, verify_manifest
from kit.fleet import BUNDLE_V1, BUNDLE_V2, sha
from starlette.routing import Route

from kernex_server import admin_api, device_api, devices_api, tokens_api
from kernex_server.api import handlers
from kernex_server.auth import Role
from kernex_server.bundles import BlobStore


def test_every_admin_route_declares_a_role_and_every_device_route_authenticates() -> None:
    admin_routes = [*admin_api.routes, *devices_api.routes, *tokens_api.routes]
    assert len(admin_routes) >= 14
    for route in admin_routes:
        assert isinstance(route, Route)
        assert route.path.startswith("/v1/admin/")
        for endpoint in handlers(route).values():
            assert isinstance(endpoint.required_role, Role), route.path  # type: ignore[attr-defined]
    for route in device_api.routes:
        for endpoint in handlers(route).values():
            assert endpoint.device_auth is True  # type: ignore[attr-defined]


def test_admin_needs_a_valid_token_of_the_right_role(server: Any) -> None:
    assert server.client.get("/v1/admin/devices").status_code == 401
    wrong = server.client.get("/v1/admin/devices", headers={"Authorization": "Bearer kx_nope"})
    assert wrong.status_code == 401
    assert server.admin_get("/v1/admin/whoami")["role"] == "admin"
    viewer = server.kx.store.create_api_token("viewer-1", "viewer", now=time.time())
    headers = {"Authorization": f"Bearer {viewer}"}
    assert server.client.get("/v1/admin/devices", headers=headers).status_code == 200
    SimDevice("dev-1").enroll(server.client)
    denied = server.client.post("/v1/admin/devices/dev-1/accept", headers=headers)
    assert denied.status_code == 403
    assert server.kx.store.get_device("dev-1").state == "pending"
    expired = server.kx.store.create_api_token(
        "old", "admin", now=time.time(), expires_at=time.time() - 1
    )
    old = {"Authorization": f"Bearer {expired}"}
    assert server.client.get("/v1/admin/devices", headers=old).status_code == 401


def test_bundle_upload_is_content_addressed_and_idempotent(server: Any) -> None:
    digest = sha(BUNDLE_V1)
    put = server.client.put(f"/v1/admin/bundles/{digest}", content=BUNDLE_V1, headers=server.auth)
    assert put.status_code == 201, put.text
    assert put.json() == {"sha256": digest, "size": len(BUNDLE_V1), "created": True}
    again = server.client.put(f"/v1/admin/bundles/{digest}", content=BUNDLE_V1, headers=server.auth)
    assert again.status_code == 200
    assert again.json()["created"] is False
    path = BlobStore(server.kx.settings.blob_dir).path_for(digest)
    assert path.read_bytes() == BUNDLE_V1
    assert path.parent.name == digest[:2]

    mismatch = server.client.put(
        f"/v1/admin/bundles/{sha(BUNDLE_V2)}", content=BUNDLE_V1 + b"x", headers=server.auth
    )
    assert mismatch.status_code == 400
    assert "not the declared" in mismatch.json()["error"]
    assert not BlobStore(server.kx.settings.blob_dir).has(sha(BUNDLE_V2))
    assert list((server.kx.settings.blob_dir / "tmp").iterdir()) == []

    time.sleep(0.01)  # about time itself: the listing is newest first, by upload time
    posted = server.client.post("/v1/admin/bundles", content=BUNDLE_V2, headers=server.auth)
    assert posted.status_code == 201
    assert posted.json()["sha256"] == sha(BUNDLE_V2)
    listed = server.admin_get("/v1/admin/bundles")["bundles"]
    assert [b["sha256"] for b in listed] == [sha(BUNDLE_V2), digest]  # newest first


def test_upload_over_the_limit_is_413(start_server: Any) -> None:
    server = start_server(max_bundle_bytes=10)
    response = server.client.post("/v1/admin/bundles", content=b"x" * 11, headers=server.auth)
    assert response.status_code == 413


def test_device_downloads_bundle_with_range_and_etag(server: Any) -> None:
    digest = sha(BUNDLE_V2)
    server.client.put(f"/v1/admin/bundles/{digest}", content=BUNDLE_V2, headers=server.auth)
    device = SimDevice("dev-1")
    device.enroll(server.client, token=server.enrollment_token())
    path = f"/v1/bundles/{digest}"
    full = device.get(server.client, path)
    assert full.status_code == 200
    assert full.content == BUNDLE_V2
    assert full.headers["etag"] == f'"{digest}"'
    assert full.headers["accept-ranges"] == "bytes"
    part = device.get(server.client, path, headers={"Range": "bytes=10-"})
    assert part.status_code == 206
    assert part.content == BUNDLE_V2[10:]
    assert part.headers["content-range"] == f"bytes 10-{len(BUNDLE_V2) - 1}/{len(BUNDLE_V2)}"
    assert server.client.get(path).status_code == 401
    assert device.get(server.client, f"/v1/bundles/{'0' * 64}").status_code == 404


def test_bundle_base_url(start_server: Any, fleet_repo: Any) -> None:
    server = start_server(bundle_base_url="https://cdn.example.com/kernex/")
    device = SimDevice("dev-1")
    device.enroll(server.client, token=server.enrollment_token())
    manifest = verify_manifest(device.manifest(server.client).content, "dev-1", server.key)
    assert manifest.bundles[0].url == f"https://cdn.example.com/kernex/{sha(BUNDLE_V1)}"


def test_device_admitted_by_declared_fingerprint(server: Any, fleet_repo: Any) -> None:
    declared = SimDevice("edge-7")
    pending = SimDevice("edge-8")
    assert pending.enroll(server.client).json()["state"] == "pending"
    fleet_repo.write("devices/edge-7.yaml", f"key_fingerprint: {declared.fingerprint()}\n")
    fleet_repo.write("devices/edge-8.yaml", f"key_fingerprint: {pending.fingerprint()}\n")
    fleet_repo.commit("declare devices")
    result = server.reconcile()
    assert result["admitted"] == ["edge-8"]  # pending device admitted by the commit
    assert pending.manifest(server.client).status_code == 200
    assert declared.enroll(server.client).json()["state"] == "accepted"
    assert declared.manifest(server.client).status_code == 200
    impostor = SimDevice("edge-7")
    response = impostor.enroll(server.client)
    assert response.status_code == 403  # the repository pins edge-7 to the other key
    assert server.kx.store.get_device("edge-7").fingerprint == declared.fingerprint()
    fleet_repo.write("devices/edge-9.yaml", f"key_fingerprint: {declared.fingerprint()}\n")
    fleet_repo.commit("declare edge-9")
    server.reconcile()
    first_come = SimDevice("edge-9").enroll(server.client, token=server.enrollment_token())
    assert first_come.status_code == 403
    assert "declares key" in first_come.json()["error"]
    assert server.kx.store.get_device("edge-9") is None


def test_manifests_are_resigned_before_expiry_with_the_same_serial(server: Any) -> None:
    device = SimDevice("dev-1")
    device.enroll(server.client, token=server.enrollment_token())
    first = verify_manifest(device.manifest(server.client).content, "dev-1", server.key)
    ttl = first.expires_at - first.issued_at
    later = time.time() + ttl * 0.6
    server.kx.reconciler.clock = lambda: later
    resigned = server.kx.reconciler.resign_expiring()
    assert [m.device_id for m in resigned] == ["dev-1"]
    server.client.portal.call(lambda: _publish(server, resigned))
    fresh = verify_manifest(device.manifest(server.client).content, "dev-1", server.key)
    assert fresh.serial == first.serial
    assert fresh.expires_at > first.expires_at
    assert fresh.bundles == first.bundles
    assert server.kx.reconciler.resign_expiring() == []  # nothing else is due


async def _publish(server: Any, manifests: Any) -> None:
    server.kx.cache.publish(manifests)
