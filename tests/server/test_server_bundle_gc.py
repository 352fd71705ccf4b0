"""Bundle garbage collection: only blobs no retained revision, manifest or rollout names,
past the grace period, go; a dry run lists them; the store's size is a metric."""

from __future__ import annotations

import os
import re
import time
from typing import Any

from kit.device import SimDevice
from kit.fleet import BUNDLE_V1, BUNDLE_V2, kernex_yaml, sha
from sqlalchemy import update

from kernex_server.models import BundleBlob
from kernex_server.retention import DAY, Pruner, RetentionPolicy

ORPHAN = b"an old upload no commit ever named\n"
FRESH = b"uploaded a minute ago, its commit not pushed yet\n"


def upload(server: Any, data: bytes) -> None:
    put = server.client.put(f"/v1/admin/bundles/{sha(data)}", content=data, headers=server.auth)
    assert put.status_code in (200, 201), put.text


def age(server: Any, data: bytes, days: float) -> None:
    """Make a stored blob look uploaded ``days`` ago (row and file)."""
    then = time.time() - days * DAY
    with server.kx.store.sessions.begin() as s:
        s.execute(update(BundleBlob).where(BundleBlob.sha256 == sha(data)).values(uploaded_at=then))
    os.utime(server.kx.blobs.path_for(sha(data)), (then, then))


def gc(server: Any, *, dry_run: bool) -> dict[str, Any]:
    path = "/v1/admin/bundles/gc" + ("?dry_run=1" if dry_run else "")
    result: dict[str, Any] = server.admin_post(path)
    return result


def store_bytes(server: Any) -> float:
    text = server.client.get("/metrics").text
    found = re.search(r"^kernex_bundle_store_bytes (\S+)$", text, re.MULTILINE)
    assert found, text
    return float(found.group(1))


def test_gc_removes_only_unreferenced_old_blobs(server: Any, fleet_repo: Any) -> None:
    for data in (BUNDLE_V1, BUNDLE_V2, ORPHAN, FRESH):
        upload(server, data)
    assert store_bytes(server) == sum(map(len, (BUNDLE_V1, BUNDLE_V2, ORPHAN, FRESH)))
    device = SimDevice("dev-1")
    device.enroll(server.client, token=server.enrollment_token())
    server.reconcile()  # app 1.0.0 (BUNDLE_V1); the catalog lists 1.1.0 (BUNDLE_V2) too
    for data in (BUNDLE_V1, BUNDLE_V2, ORPHAN):
        age(server, data, 30)

    planned = gc(server, dry_run=True)
    assert [r["sha256"] for r in planned["removed"]] == [sha(ORPHAN)]
    assert planned["removed_bytes"] == len(ORPHAN)
    assert planned["kept"] == 3
    assert server.kx.blobs.has(sha(ORPHAN))  # a dry run removes nothing

    done = gc(server, dry_run=False)
    assert done["removed"] == planned["removed"]
    assert not server.kx.blobs.has(sha(ORPHAN))
    assert {r["sha256"] for r in server.admin_get("/v1/admin/bundles")["bundles"]} == {
        sha(BUNDLE_V1), sha(BUNDLE_V2), sha(FRESH)
    }  # fmt: skip
    assert store_bytes(server) == done["store_bytes"] == len(BUNDLE_V1 + BUNDLE_V2 + FRESH)
    audit = server.admin_get("/v1/admin/audit?action=bundle.gc")["entries"]
    assert [e["detail"]["dry_run"] for e in audit] == [False, True]

    # A commit drops 1.1.0 from the catalog: the older revision still names it ...
    fleet_repo.write(
        "bundles/app.yaml",
        f"name: app\nversions:\n  1.0.0:\n    sha256: {sha(BUNDLE_V1)}\n"
        f"    size: {len(BUNDLE_V1)}\n",
    )
    fleet_repo.write("kernex.yaml", kernex_yaml(greeting="only 1.0.0 now"))
    fleet_repo.commit("catalog without 1.1.0")
    assert server.reconcile()["state"] == "deployed"
    assert gc(server, dry_run=True)["removed"] == []
    # ... until retention prunes that revision; then 1.1.0 goes, 1.0.0 (served) stays.
    policy = RetentionPolicy(365, 90, 365, 180, 365, batch=100)
    pruned = Pruner(server.kx.store.sessions, policy, clock=lambda: time.time() + 400 * DAY)
    assert pruned.prune()["revisions"] == 1
    assert [r["sha256"] for r in gc(server, dry_run=False)["removed"]] == [sha(BUNDLE_V2)]
    assert server.kx.blobs.has(sha(BUNDLE_V1))
    assert device.get(server.client, f"/v1/bundles/{sha(BUNDLE_V1)}").status_code == 200


def test_gc_needs_an_admin_and_a_reupload_restarts_the_grace(server: Any) -> None:
    operator = server.kx.store.create_api_token("op", "operator", now=time.time())
    refused = server.client.post(
        "/v1/admin/bundles/gc", headers={"Authorization": f"Bearer {operator}"}
    )
    assert refused.status_code == 403
    upload(server, ORPHAN)
    age(server, ORPHAN, 30)
    upload(server, ORPHAN)  # pushed again: its commit is on the way
    assert gc(server, dry_run=False)["removed"] == []
    assert server.kx.blobs.has(sha(ORPHAN))
