"""The serial floor: manifest serials never go backwards, not even across a restore.

A device refuses a manifest whose serial is lower than the highest it accepted. A server
restored from a backup only knows the serials issued up to the backup, while its devices
may have accepted later ones. ``kernex server restore`` therefore records a *serial floor*
in the ``server_state`` table: the highest serial the backup holds (manifests, deployments,
rollouts) plus a jump (``DEFAULT_SERIAL_JUMP`` unless told otherwise), which is more than
the number of new desired states one device can be given between a backup and its
restore. Every serial issued from then on is at least the floor, and at start the server
re-signs each manifest below the floor, same content, under the floor itself, so every
device takes it as newer than anything it saw. See docs/operations.md.
"""

from __future__ import annotations

from dataclasses import replace

from sqlalchemy import func, inspect, select, update
from sqlalchemy.orm import Session

from kernex_server.manifests import ManifestIssuer, ServedManifest, stored_manifest
from kernex_server.models import Deployment, DeviceManifest, Revision, RolloutDevice, ServerState

SERIAL_FLOOR = "serial_floor"
DEFAULT_SERIAL_JUMP = 1_000_000


def read_floor(s: Session) -> int:
    row = s.get(ServerState, SERIAL_FLOOR)
    return int(row.value) if row is not None else 0


def deployed_commit(s: Session) -> str | None:
    """The commit of the newest deployed revision."""
    return s.scalar(
        select(Revision.commit)
        .where(Revision.state == "deployed")
        .order_by(Revision.id.desc())
        .limit(1)
    )


def highest_serial(s: Session) -> int:
    """The highest serial the database knows of, in any table that records one (tables
    of an older schema than 0006 have no floor yet)."""
    candidates = [
        s.scalar(select(func.max(DeviceManifest.serial))),
        s.scalar(select(func.max(Deployment.serial))),
        s.scalar(select(func.max(RolloutDevice.new_serial))),
        s.scalar(select(func.max(RolloutDevice.rollback_serial))),
    ]
    if inspect(s.connection()).has_table(ServerState.__tablename__):
        candidates.append(read_floor(s))
    return max(int(c or 0) for c in candidates)


def raise_floor(s: Session, jump: int, *, at_least: int = 0) -> int:
    """Set the floor to the highest known serial (or ``at_least``, the highest of the
    database a forced restore replaced) plus ``jump``; return it."""
    floor = max(highest_serial(s), at_least) + jump
    row = s.get(ServerState, SERIAL_FLOOR)
    if row is None:
        s.add(ServerState(name=SERIAL_FLOOR, value=floor))
    else:
        row.value = floor
    return floor


def lift_to_floor(
    s: Session, issuer: ManifestIssuer, floor: int, *, now: float, ttl: int
) -> list[ServedManifest]:
    """Re-sign every manifest whose serial is below ``floor`` under the floor itself (same
    content, fresh validity), recorded as a deployment; rollouts follow the new serial."""
    rows = s.scalars(select(DeviceManifest).where(DeviceManifest.serial < floor)).all()
    return [reissue(s, issuer, row, floor, now=now, ttl=ttl) for row in rows]


def resign_before(
    s: Session, issuer: ManifestIssuer, threshold: float, now: float, ttl: int
) -> list[ServedManifest]:
    """Re-sign every manifest expiring before ``threshold``: same serial and content, new
    validity (the agent takes it as a refresh)."""
    out = []
    for row in s.scalars(select(DeviceManifest).where(DeviceManifest.expires_at < threshold)):
        fresh, envelope = issuer.resign(stored_manifest(row.envelope), now=now, ttl=ttl)
        row.envelope = envelope.decode("utf-8")
        row.issued_at = fresh.issued_at
        row.expires_at = fresh.expires_at
        out.append(ServedManifest(row.device_id, row.serial, envelope, row.expires_at))
    return out


def lift_device(
    s: Session, issuer: ManifestIssuer, device_id: str, seen: int, *, now: float, ttl: int
) -> ServedManifest | None:
    """A device reported serial ``seen``, above the one it is served (the server lost
    state it had, e.g. a restore with too small a jump): serve the same content under
    ``seen + 1``. ``None`` when the device has no manifest; the current one when it is
    at or above ``seen`` already (another server sharing the database issued it)."""
    row = s.get(DeviceManifest, device_id)
    if row is None:
        return None
    if row.serial >= seen:
        return ServedManifest(row.device_id, row.serial, row.envelope.encode(), row.expires_at)
    return reissue(s, issuer, row, seen + 1, now=now, ttl=ttl)


def reissue(
    s: Session, issuer: ManifestIssuer, row: DeviceManifest, floor: int, *, now: float, ttl: int
) -> ServedManifest:
    """``row``'s manifest again under serial ``floor`` (same content, fresh validity and
    the issuer's current key announcements), recorded as a deployment."""
    old = stored_manifest(row.envelope)
    manifest = replace(old, serial=floor, issued_at=int(now), expires_at=int(now) + ttl)
    envelope = issuer.sign(manifest)
    for column in (RolloutDevice.new_serial, RolloutDevice.rollback_serial):
        s.execute(
            update(RolloutDevice)
            .where(RolloutDevice.device_id == row.device_id)
            .where(column == row.serial)
            .values({column.key: floor})
        )
    row.serial = floor
    row.envelope = envelope.decode("utf-8")
    row.issued_at = manifest.issued_at
    row.expires_at = manifest.expires_at
    s.add(
        Deployment(
            device_id=row.device_id,
            serial=floor,
            revision=row.revision,
            desired_digest=row.desired_digest,
            bundles={b.name: b.version for b in manifest.bundles},
            created_at=now,
            rollout_id=int(old.rollout_id) if old.rollout_id else None,
        )
    )
    return ServedManifest(row.device_id, floor, envelope, manifest.expires_at)
