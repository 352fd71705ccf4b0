"""Enrollment: admit a device's key under its id, once.

Admission, in order: a valid enrollment token (its use is counted), a key fingerprint
declared in ``devices/<id>.yaml`` of the deployed revision, or else the device waits as
``pending`` for an admin. The same id with another key is refused (409, no takeover),
and so is the same key under another id (409: a key belongs to one device, which the
unique index on ``devices.fingerprint`` also holds against a race). The same key again is
idempotent and may complete a pending admission.

A device never relabels itself: once it is accepted, rejected or revoked, the labels of a
re-enrollment are kept apart as ``proposed_labels`` until an admin accepts them
(``accept_labels``); only a pending device's labels follow its enrollment. Each outcome
names what the enrollment changed, for the audit log.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from kernex_core import keys
from kernex_core.protocol import EnrollmentState, EnrollRequest
from kernex_server.errors import EnrollmentError
from kernex_server.models import Device, EnrollmentToken
from kernex_server.ratelimit import RateLimiter
from kernex_server.store import DeviceRecord
from kernex_server.tokens import hash_token


@dataclass(frozen=True)
class EnrollOutcome:
    device: DeviceRecord
    created: bool
    newly_accepted: bool
    changes: dict[str, Any] = field(default_factory=dict)  # what a re-enrollment changed


class Enroller:
    def __init__(
        self, sessions: sessionmaker[Session], *, limiter: RateLimiter | None = None
    ) -> None:
        self.sessions = sessions
        # enrollments per client address, spent before anything is read or written
        self.limiter = limiter or RateLimiter(0, 1)

    def enroll(
        self,
        request: EnrollRequest,
        public_key: keys.PublicKey,
        *,
        declared_fingerprint: str | None,
        now: float,
    ) -> EnrollOutcome:
        fingerprint = keys.fingerprint(public_key)
        if declared_fingerprint is not None and declared_fingerprint != fingerprint:
            raise EnrollmentError(
                f"devices/{request.device_id}.yaml declares key {declared_fingerprint}, "
                f"this request has {fingerprint}",
                status=403,
                hint="Enroll with the key the fleet repository declares, or change "
                "`key_fingerprint` there.",
            )
        try:
            with self.sessions.begin() as s:
                return self._enroll(s, request, public_key, fingerprint, declared_fingerprint, now)
        except IntegrityError as exc:  # a concurrent enrollment of the same id or key won
            raise EnrollmentError(
                f"device {request.device_id} or its key was enrolled concurrently",
                status=409,
                hint="Retry the enrollment.",
            ) from exc

    def _enroll(
        self,
        s: Session,
        request: EnrollRequest,
        public_key: keys.PublicKey,
        fingerprint: str,
        declared: str | None,
        now: float,
    ) -> EnrollOutcome:
        row = s.get(Device, request.device_id)
        if row is not None and row.fingerprint != fingerprint:
            raise EnrollmentError(
                f"device id {request.device_id} is already enrolled with another key",
                status=409,
                hint="Pick another device id, or have an admin remove the old device first.",
            )
        if row is None:
            owner = s.scalar(select(Device.id).where(Device.fingerprint == fingerprint))
            if owner is not None:
                raise EnrollmentError(
                    f"key {fingerprint} is already enrolled under another device id",
                    status=409,
                    hint="Each device needs its own key: enroll this one from a fresh "
                    "data directory (a new key), or re-enroll under the id it already has.",
                )
        admitted_by = self._admission(s, request, fingerprint, declared, now, row)
        if row is None:
            row = Device(
                id=request.device_id,
                public_key=keys.public_key_to_pem(public_key),
                fingerprint=fingerprint,
                algorithm=keys.algorithm_of(public_key),
                labels=dict(request.labels),
                state=EnrollmentState.PENDING.value,
                agent_version=request.agent_version[:64],
                enrolled_at=now,
                updated_at=now,
                last_seen=now,
            )
            s.add(row)
            created = True
            changes: dict[str, Any] = {}
        else:
            changes = _reenroll(row, request, now)
            created = False
        newly = False
        if admitted_by is not None and row.state == EnrollmentState.PENDING.value:
            row.state = EnrollmentState.ACCEPTED.value
            row.admitted_by = admitted_by
            newly = True
        s.flush()
        return EnrollOutcome(DeviceRecord.of(row), created, newly, changes)

    def accept_labels(self, device_id: str, *, now: float) -> tuple[dict[str, str], Any] | None:
        """Make a device's proposed labels its labels: (old labels, proposal); the
        proposal is None when there is none. None when the device does not exist."""
        return self._settle(device_id, now, accept=True)

    def reject_labels(self, device_id: str, *, now: float) -> tuple[dict[str, str], Any] | None:
        """Drop a device's proposed labels: (its labels, the proposal dropped)."""
        return self._settle(device_id, now, accept=False)

    def _settle(
        self, device_id: str, now: float, *, accept: bool
    ) -> tuple[dict[str, str], Any] | None:
        with self.sessions.begin() as s:
            row = s.get(Device, device_id)
            if row is None:
                return None
            labels, proposed = dict(row.labels or {}), row.proposed_labels
            if proposed is not None:
                if accept:
                    row.labels = dict(proposed)
                row.proposed_labels = None
                row.updated_at = now
            return labels, proposed

    def _admission(
        self,
        s: Session,
        request: EnrollRequest,
        fingerprint: str,
        declared: str | None,
        now: float,
        row: Device | None,
    ) -> str | None:
        if row is not None and row.state != EnrollmentState.PENDING.value:
            return None  # accepted stays; rejected and revoked need an admin
        if request.enrollment_token:
            return self._use_token(s, request.enrollment_token, now)
        if declared is not None and declared == fingerprint:
            return "fingerprint"
        return None

    def _use_token(self, s: Session, token: str, now: float) -> str:
        row = s.scalar(
            select(EnrollmentToken).where(EnrollmentToken.token_hash == hash_token(token))
        )
        usable = (
            row is not None
            and row.revoked_at is None
            and (row.expires_at is None or row.expires_at > now)
            and (row.max_uses is None or row.uses < row.max_uses)
        )
        if not usable or row is None:
            raise EnrollmentError(
                "enrollment token is unknown, expired, revoked or used up",
                status=403,
                hint="Ask an admin for a new token (`kernex enroll-tokens create`).",
            )
        # Conditional update: two devices racing for the last use cannot both win.
        cond = EnrollmentToken.max_uses.is_(None) | (
            EnrollmentToken.uses < EnrollmentToken.max_uses
        )
        result = s.execute(
            update(EnrollmentToken)
            .where(EnrollmentToken.id == row.id)
            .where(cond)
            .values(uses=EnrollmentToken.uses + 1)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            raise EnrollmentError("enrollment token is used up", status=403)
        return f"token:{row.name}"


def _reenroll(row: Device, request: EnrollRequest, now: float) -> dict[str, Any]:
    """Apply a re-enrollment of a known device; answer what changed (empty: nothing)."""
    changes: dict[str, Any] = {}
    asked = dict(request.labels)
    current = dict(row.labels or {})
    if row.state == EnrollmentState.PENDING.value:
        if asked != current:
            changes["labels"] = {"from": current, "to": asked}
            row.labels = asked
    else:  # admitted or refused: labels change through Git or an admin act only
        proposal = asked if asked != current else None
        if proposal != row.proposed_labels:
            changes["proposed_labels"] = proposal
            row.proposed_labels = proposal
    version = request.agent_version[:64]
    if version != row.agent_version:
        changes["agent_version"] = {"from": row.agent_version, "to": version}
        row.agent_version = version
    row.last_seen = now
    if changes:
        row.updated_at = now
    return changes
