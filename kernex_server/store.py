"""Data access for the server: small synchronous methods, each one transaction.

Called from worker threads (``anyio.to_thread``), never on the event loop. Methods take
and return plain values or frozen records, so nothing lazy leaks out of a session.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Table, bindparam, delete, func, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from kernex_core.protocol import EnrollmentState, StatusReport
from kernex_server.models import (
    AuditEntry,
    BundleBlob,
    Deployment,
    Device,
    DeviceManifest,
    DeviceStatus,
    Revision,
    StatusReportRow,
)
from kernex_server.tokens import TokenStore

_devices: Table = Device.__table__  # type: ignore[assignment]
_current: Table = DeviceStatus.__table__  # type: ignore[assignment]
_history: Table = StatusReportRow.__table__  # type: ignore[assignment]
_IN_CHUNK = 500  # ids per IN (...) list, well under every driver's parameter limit


@dataclass(frozen=True)
class DeviceRecord:
    id: str
    public_key: str
    fingerprint: str
    algorithm: str
    labels: Mapping[str, str]
    state: str
    admitted_by: str | None
    agent_version: str
    enrolled_at: float
    last_seen: float | None
    proposed_labels: Mapping[str, str] | None = None

    @classmethod
    def of(cls, row: Device) -> DeviceRecord:
        return cls(
            row.id,
            row.public_key,
            row.fingerprint,
            row.algorithm,
            dict(row.labels or {}),
            row.state,
            row.admitted_by,
            row.agent_version,
            row.enrolled_at,
            row.last_seen,
            dict(row.proposed_labels) if row.proposed_labels is not None else None,
        )


@dataclass(frozen=True)
class AuditQuery:
    """Filters of the audit log; ``None`` means any."""

    since: float | None = None
    until: float | None = None
    actor: str | None = None
    target: str | None = None
    action: str | None = None
    limit: int = 100


def _status_dict(row: DeviceStatus | StatusReportRow) -> dict[str, Any]:
    return {
        "phase": row.phase,
        "serial": row.serial,
        "revision": row.revision,
        "bundles": dict(row.bundles or {}),
        "config_hash": row.config_hash,
        "error": row.error,
        "log_tail": row.log_tail,
        "agent_version": row.agent_version,
        "reported_at": row.reported_at,
        "received_at": row.received_at,
    }


def _report_values(device_id: str, report: StatusReport, now: float) -> dict[str, Any]:
    return {
        "device_id": device_id,
        "phase": report.phase.value,
        "serial": report.serial,
        "revision": report.revision,
        "bundles": dict(report.bundles),
        "config_hash": report.config_hash,
        "error": report.error,
        "log_tail": report.log_tail,
        "agent_version": report.agent_version,
        "reported_at": report.reported_at,
        "received_at": now,
    }


def _chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def revision_dict(row: Revision) -> dict[str, Any]:
    return {
        "id": row.id,
        "commit": row.commit,
        "branch": row.branch,
        "state": row.state,
        "errors": list(row.errors or []),
        "forced": row.forced,
        "previous": row.previous,
        "devices_changed": row.devices_changed,
        "created_at": row.created_at,
    }


class Store(TokenStore):
    """The server's reads and writes of devices, statuses, revisions, audit entries and
    blobs; admin and enrollment tokens are ``TokenStore``'s (``kernex_server.tokens``)."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    # -- devices -----------------------------------------------------------------------

    def get_device(self, device_id: str) -> DeviceRecord | None:
        with self.sessions() as s:
            row = s.get(Device, device_id)
            return DeviceRecord.of(row) if row else None

    def list_devices(self) -> list[DeviceRecord]:
        with self.sessions() as s:
            return [DeviceRecord.of(r) for r in s.scalars(select(Device).order_by(Device.id))]

    def set_device_state(
        self, device_id: str, state: EnrollmentState, *, by: str, now: float
    ) -> DeviceRecord | None:
        with self.sessions.begin() as s:
            row = s.get(Device, device_id)
            if row is None:
                return None
            row.state = state.value
            row.updated_at = now
            if state is EnrollmentState.ACCEPTED:
                row.admitted_by = by
            return DeviceRecord.of(row)

    def touch(self, seen: Mapping[str, float]) -> None:
        """Record heartbeats (device id -> last request time) in one transaction."""
        if not seen:
            return
        with self.sessions.begin() as s:
            for device_id, when in seen.items():
                s.execute(
                    update(Device)
                    .where(Device.id == device_id)
                    .where((Device.last_seen.is_(None)) | (Device.last_seen < when))
                    .values(last_seen=when)
                )

    # -- status ------------------------------------------------------------------------

    def record_status(self, device_id: str, report: StatusReport, *, now: float, keep: int) -> None:
        self.record_statuses([(device_id, report, now)], keep=keep)

    def record_statuses(
        self, batch: Sequence[tuple[str, StatusReport, float]], *, keep: int
    ) -> None:
        """Record status reports ``(device id, report, received at)``, oldest first, in one
        transaction: each device's newest becomes its current status, all go to the
        history, and each device's history is cut to its ``keep`` newest rows."""
        if not batch:
            return
        history = [_report_values(device_id, r, now) for device_id, r, now in batch]
        newest = {row["device_id"]: row for row in history}  # later reports win
        with self.sessions.begin() as s:
            conn = s.connection()
            for ids in _chunks(sorted(newest), _IN_CHUNK):
                known = set(conn.scalars(select(_devices.c.id).where(_devices.c.id.in_(ids))))
                gone = set(ids) - known  # deleted since it reported: nothing to attach to
                for device_id in gone:
                    del newest[device_id]
                conn.execute(delete(_current).where(_current.c.device_id.in_(ids)))
            if not newest:
                return
            history = [row for row in history if row["device_id"] in newest]
            conn.execute(insert(_current), list(newest.values()))
            conn.execute(insert(_history), history)
            self._trim_history(conn, sorted(newest), keep)
            versions = [
                {"b_id": d, "b_version": row["agent_version"][:64]}
                for d, row in newest.items()
                if row["agent_version"]
            ]
            if versions:
                conn.execute(
                    update(_devices)
                    .where(_devices.c.id == bindparam("b_id"))
                    .where(_devices.c.agent_version != bindparam("b_version"))
                    .values(agent_version=bindparam("b_version")),
                    versions,
                )

    @staticmethod
    def _trim_history(conn: Connection, device_ids: Sequence[str], keep: int) -> None:
        for ids in _chunks(device_ids, _IN_CHUNK):
            over = list(
                conn.scalars(
                    select(_history.c.device_id)
                    .where(_history.c.device_id.in_(ids))
                    .group_by(_history.c.device_id)
                    .having(func.count() > keep)
                )
            )
            if not over:
                continue
            ranked = (
                select(
                    _history.c.id,
                    func.row_number()
                    .over(partition_by=_history.c.device_id, order_by=_history.c.id.desc())
                    .label("rank"),
                )
                .where(_history.c.device_id.in_(over))
                .subquery()
            )
            conn.execute(
                delete(_history).where(
                    _history.c.id.in_(select(ranked.c.id).where(ranked.c.rank > keep))
                )
            )

    def current_status(self, device_id: str) -> dict[str, Any] | None:
        with self.sessions() as s:
            row = s.get(DeviceStatus, device_id)
            return _status_dict(row) if row else None

    def status_history(self, device_id: str, limit: int = 50) -> list[dict[str, Any]]:
        with self.sessions() as s:
            rows = s.scalars(
                select(StatusReportRow)
                .where(StatusReportRow.device_id == device_id)
                .order_by(StatusReportRow.id.desc())
                .limit(limit)
            )
            return [_status_dict(r) for r in rows]

    def deployments(self, device_id: str, limit: int = 50) -> list[dict[str, Any]]:
        """The device's deployment history, newest first."""
        with self.sessions() as s:
            rows = s.scalars(
                select(Deployment)
                .where(Deployment.device_id == device_id)
                .order_by(Deployment.serial.desc(), Deployment.id.desc())
                .limit(limit)
            )
            return [
                {
                    "serial": r.serial,
                    "revision": r.revision,
                    "bundles": dict(r.bundles or {}),
                    "desired_digest": r.desired_digest,
                    "created_at": r.created_at,
                }
                for r in rows
            ]

    def device_overview(self) -> list[dict[str, Any]]:
        """Every device with its desired serial and the serial it last reported."""
        with self.sessions() as s:
            rows = s.execute(
                select(
                    Device,
                    DeviceManifest.serial,
                    DeviceManifest.revision,
                    DeviceManifest.desired_digest,
                    DeviceStatus,
                )
                .outerjoin(DeviceManifest, DeviceManifest.device_id == Device.id)
                .outerjoin(DeviceStatus, DeviceStatus.device_id == Device.id)
                .order_by(Device.id)
            ).all()
            out = []
            for device, serial, revision, digest, status in rows:
                out.append(
                    {
                        "device": DeviceRecord.of(device),
                        "desired_serial": serial,
                        "desired_revision": revision,
                        "desired_digest": digest,
                        "status": _status_dict(status) if status else None,
                    }
                )
            return out

    # -- manifests ---------------------------------------------------------------------

    def all_manifests(self) -> list[DeviceManifest]:
        """Signed manifests of accepted devices (to fill the cache at start)."""
        with self.sessions() as s:
            rows = s.scalars(
                select(DeviceManifest)
                .join(Device, Device.id == DeviceManifest.device_id)
                .where(Device.state == EnrollmentState.ACCEPTED.value)
            )
            return list(rows)

    # -- revisions ---------------------------------------------------------------------

    def revisions(self, limit: int = 50) -> list[dict[str, Any]]:
        with self.sessions() as s:
            rows = s.scalars(select(Revision).order_by(Revision.id.desc()).limit(limit))
            return [revision_dict(r) for r in rows]

    # -- audit -------------------------------------------------------------------------

    def audit(
        self,
        *,
        at: float,
        actor: str,
        action: str,
        target: str,
        address: str,
        result: str,
        detail: Mapping[str, Any] | None = None,
    ) -> None:
        with self.sessions.begin() as s:
            s.add(
                AuditEntry(
                    at=at,
                    actor=actor[:120],
                    action=action[:64],
                    target=target[:255],
                    address=address[:64],
                    result=result,
                    detail=dict(detail or {}),
                )
            )

    def audit_entries(self, query: AuditQuery) -> list[dict[str, Any]]:
        """Entries matching ``query``, newest first."""
        stmt = select(AuditEntry)
        if query.since is not None:
            stmt = stmt.where(AuditEntry.at >= query.since)
        if query.until is not None:
            stmt = stmt.where(AuditEntry.at <= query.until)
        if query.actor is not None:
            stmt = stmt.where(AuditEntry.actor == query.actor)
        if query.target is not None:
            stmt = stmt.where(AuditEntry.target == query.target)
        if query.action is not None:
            stmt = stmt.where(AuditEntry.action == query.action)
        stmt = stmt.order_by(AuditEntry.at.desc(), AuditEntry.id.desc()).limit(query.limit)
        with self.sessions() as s:
            return [
                {
                    "id": r.id,
                    "at": r.at,
                    "actor": r.actor,
                    "action": r.action,
                    "target": r.target,
                    "address": r.address,
                    "result": r.result,
                    "detail": dict(r.detail or {}),
                }
                for r in s.scalars(stmt)
            ]

    # -- fleet status ------------------------------------------------------------------

    def count_blobs(self) -> int:
        with self.sessions() as s:
            return int(s.scalar(select(func.count()).select_from(BundleBlob)) or 0)

    def latest_revisions(self) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """The newest revision seen and the newest one deployed."""
        with self.sessions() as s:
            newest = s.scalar(select(Revision).order_by(Revision.id.desc()).limit(1))
            deployed = s.scalar(
                select(Revision)
                .where(Revision.state == "deployed")
                .order_by(Revision.id.desc())
                .limit(1)
            )
            return (
                revision_dict(newest) if newest else None,
                revision_dict(deployed) if deployed else None,
            )

    # -- bundles -----------------------------------------------------------------------

    def record_blob(self, sha256: str, size: int, *, now: float, by: str) -> None:
        with self.sessions.begin() as s:
            if s.get(BundleBlob, sha256) is None:
                s.add(BundleBlob(sha256=sha256, size=size, uploaded_at=now, uploaded_by=by))

    def list_blobs(self, limit: int = 200) -> list[dict[str, Any]]:
        """Uploaded bundles, newest first."""
        with self.sessions() as s:
            rows = s.scalars(
                select(BundleBlob)
                .order_by(BundleBlob.uploaded_at.desc(), BundleBlob.sha256)
                .limit(limit)
            )
            return [
                {
                    "sha256": r.sha256,
                    "size": r.size,
                    "uploaded_at": r.uploaded_at,
                    "uploaded_by": r.uploaded_by,
                }
                for r in rows
            ]
