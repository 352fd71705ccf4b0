"""The serial rule at the database (PostgreSQL, migration 0009): no transaction of any
server process may write a serial from a revision older than the deployed one, nor a
serial at or below one the device already has. Rollouts and the serial floor's re-signs
stay allowed (their own tests run on PostgreSQL too)."""

from __future__ import annotations

import time
from typing import Any

import pytest
import sqlalchemy as sa
from kit.device import SimDevice
from kit.fleet import kernex_yaml

from kernex_server.manifests import stored_manifest
from kernex_server.models import Deployment, DeviceManifest

pytestmark = pytest.mark.parametrize(
    "database", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)


def deployment(device_id: str, serial: int, revision: str, digest: str) -> Deployment:
    return Deployment(
        device_id=device_id,
        serial=serial,
        revision=revision,
        desired_digest=digest,
        bundles={},
        created_at=time.time(),
    )


def two_revisions(server: Any, fleet_repo: Any) -> tuple[str, str, str]:
    """dev-1 served the first commit, then the second: (old commit, its digest, new)."""
    device = SimDevice("dev-1")
    assert device.enroll(server.client, server.enrollment_token()).status_code == 201
    old = fleet_repo.head()
    with server.kx.store.sessions() as s:
        old_digest = s.get(DeviceManifest, "dev-1").desired_digest
    fleet_repo.write("kernex.yaml", kernex_yaml(greeting="newer"))
    new = fleet_repo.commit("a newer greeting")
    assert server.reconcile()["state"] == "deployed"
    return old, old_digest, new


def test_an_older_revision_is_refused_at_the_database(server: Any, fleet_repo: Any) -> None:
    old, old_digest, new = two_revisions(server, fleet_repo)
    sessions = server.kx.store.sessions
    refused = f"carries revision {old}, not the deployed {new}"
    with pytest.raises(sa.exc.DBAPIError, match=refused), sessions.begin() as s:
        s.add(deployment("dev-1", 3, old, old_digest))

    # the reconciler's own write path, handed a manifest built from the older commit
    reconciler = server.kx.reconciler
    with sessions() as s:
        current = s.get(DeviceManifest, "dev-1")
        draft = stored_manifest(current.envelope)
    stale = type(draft)(**{**draft.__dict__, "revision": old, "serial": 0})
    with pytest.raises(sa.exc.DBAPIError, match=refused), sessions.begin() as s:
        reconciler._write(s, stale, old_digest, s.get(DeviceManifest, "dev-1"), time.time())
    with sessions() as s:  # nothing of it stayed
        assert s.get(DeviceManifest, "dev-1").serial == 2
        assert s.scalar(sa.select(sa.func.max(Deployment.serial))) == 2


def test_a_serial_never_goes_down(server: Any, fleet_repo: Any) -> None:
    _, _, new = two_revisions(server, fleet_repo)
    sessions = server.kx.store.sessions
    with sessions() as s:
        digest = s.get(DeviceManifest, "dev-1").desired_digest
    with pytest.raises(sa.exc.DBAPIError, match="is not above its serial 2"), sessions.begin() as s:
        s.add(deployment("dev-1", 2, new, digest))
    with sessions.begin() as s:  # the deployed revision under a higher serial is fine
        s.add(deployment("dev-1", 3, new, digest))
