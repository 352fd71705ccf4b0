"""SQLAlchemy 2 models: the server's record of devices, manifests, revisions and status.

Times are Unix seconds (float) in UTC, so SQLite and PostgreSQL store them alike. JSON
columns hold small documents (labels, installed bundles, validation errors).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Device(Base):
    """An enrolled device; its key (``fingerprint``) belongs to it alone."""

    __tablename__ = "devices"

    id: Mapped[str] = mapped_column(String(63), primary_key=True)
    public_key: Mapped[str] = mapped_column(Text)
    fingerprint: Mapped[str] = mapped_column(String(128), unique=True, index=True)
    algorithm: Mapped[str] = mapped_column(String(32))
    labels: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # what the device asked for when it re-enrolled once admitted or refused; an admin
    # accepts (they become ``labels``) or rejects them
    proposed_labels: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    admitted_by: Mapped[str | None] = mapped_column(String(120), nullable=True)
    agent_version: Mapped[str] = mapped_column(String(64), default="")
    enrolled_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)
    last_seen: Mapped[float | None] = mapped_column(Float, nullable=True)


class DeviceManifest(Base):
    """The signed manifest currently served to one device; ``serial`` never decreases."""

    __tablename__ = "device_manifests"

    device_id: Mapped[str] = mapped_column(
        String(63), ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True
    )
    serial: Mapped[int] = mapped_column(BigInteger)
    desired_digest: Mapped[str] = mapped_column(String(64))
    revision: Mapped[str] = mapped_column(String(64))
    envelope: Mapped[str] = mapped_column(Text)
    issued_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float)


class Deployment(Base):
    """One new desired state for one device (a new serial): the deployment history."""

    __tablename__ = "deployments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(
        String(63), ForeignKey("devices.id", ondelete="CASCADE"), index=True
    )
    serial: Mapped[int] = mapped_column(BigInteger)
    revision: Mapped[str] = mapped_column(String(64))
    desired_digest: Mapped[str] = mapped_column(String(64))
    bundles: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # name -> version
    created_at: Mapped[float] = mapped_column(Float)
    # the rollout that served it (its waves and rollbacks may carry an older revision)
    rollout_id: Mapped[int | None] = mapped_column(Integer, nullable=True)


class _ReportColumns:
    """The columns of one status report, shared by the latest report and the history."""

    phase: Mapped[str] = mapped_column(String(16))
    serial: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    revision: Mapped[str | None] = mapped_column(String(64), nullable=True)
    bundles: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    config_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    log_tail: Mapped[str | None] = mapped_column(Text, nullable=True)
    agent_version: Mapped[str] = mapped_column(String(64), default="")
    reported_at: Mapped[str | None] = mapped_column(String(40), nullable=True)
    received_at: Mapped[float] = mapped_column(Float)


class DeviceStatus(_ReportColumns, Base):
    """The latest status report of a device."""

    __tablename__ = "device_status"

    device_id: Mapped[str] = mapped_column(
        String(63), ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True
    )


class StatusReportRow(_ReportColumns, Base):
    """Status history, bounded per device by the ``status_history`` setting."""

    __tablename__ = "status_reports"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(
        String(63), ForeignKey("devices.id", ondelete="CASCADE"), index=True
    )


class Revision(Base):
    """One commit the reconciler looked at, deployed or not, and why."""

    __tablename__ = "revisions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    commit: Mapped[str] = mapped_column(String(64), index=True)
    branch: Mapped[str] = mapped_column(String(255))
    state: Mapped[str] = mapped_column(String(16))  # deployed | invalid | unsigned
    errors: Mapped[list[Any]] = mapped_column(JSON, default=list)
    forced: Mapped[bool] = mapped_column(Boolean, default=False)  # not a descendant
    previous: Mapped[str | None] = mapped_column(String(64), nullable=True)
    devices_changed: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[float] = mapped_column(Float)


class EnrollmentToken(Base):
    __tablename__ = "enrollment_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(120))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[float] = mapped_column(Float)
    created_by: Mapped[str | None] = mapped_column(String(120), nullable=True)
    expires_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    max_uses: Mapped[int | None] = mapped_column(Integer, nullable=True)
    uses: Mapped[int] = mapped_column(Integer, default=0)
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class ApiToken(Base):
    """Admin-plane bearer tokens, stored as SHA-256 hashes; ``role`` orders the rights."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(120), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[float] = mapped_column(Float)
    created_by: Mapped[str | None] = mapped_column(String(120), nullable=True)
    expires_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_used_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class BundleBlob(Base):
    """A bundle's bytes in the content-addressed store."""

    __tablename__ = "bundle_blobs"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    uploaded_at: Mapped[float] = mapped_column(Float)
    uploaded_by: Mapped[str | None] = mapped_column(String(120), nullable=True)


class AuditEntry(Base):
    """One act on the fleet: who (token name, device, ``reconciler``, ``webhook``), what,
    on which target, from where, and how it ended. Rows are only ever inserted."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[float] = mapped_column(Float, index=True)
    actor: Mapped[str] = mapped_column(String(120), index=True)
    action: Mapped[str] = mapped_column(String(64), index=True)
    target: Mapped[str] = mapped_column(String(255), index=True)
    address: Mapped[str] = mapped_column(String(64))
    result: Mapped[str] = mapped_column(String(16))  # ok | denied | error
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class Rollout(Base):
    """One staged change of one group's devices (see docs/rollouts.md)."""

    __tablename__ = "rollouts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    group: Mapped[str] = mapped_column(String(120))  # "" for the fleet's default rollout
    revision: Mapped[str] = mapped_column(String(64), index=True)
    previous_revision: Mapped[str | None] = mapped_column(String(64), nullable=True)
    policy: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # running | paused | halted | completed | aborted | superseded
    state: Mapped[str] = mapped_column(String(16), index=True)
    wave: Mapped[int] = mapped_column(Integer, default=0)  # highest admitted wave (0-based)
    wave_started_at: Mapped[float] = mapped_column(Float)
    devices: Mapped[int] = mapped_column(Integer, default=0)
    failure_allowance: Mapped[int] = mapped_column(Integer, default=0)  # accepted by resume
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)  # why it halted or ended
    superseded_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # The wave counts it ended with (completed, or released by a newer commit); its
    # devices move on afterwards, so live counts would no longer describe it.
    final: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class RolloutDevice(Base):
    """A device of a rollout: its wave, the state it moves to and the one it leaves."""

    __tablename__ = "rollout_devices"

    rollout_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("rollouts.id", ondelete="CASCADE"), primary_key=True
    )
    device_id: Mapped[str] = mapped_column(
        String(63), ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    wave: Mapped[int] = mapped_column(Integer)
    target_digest: Mapped[str] = mapped_column(String(64))
    target: Mapped[dict[str, Any]] = mapped_column(JSON)  # Manifest.to_dict() of the new state
    previous: Mapped[dict[str, Any]] = mapped_column(JSON)  # the manifest it was served before
    new_serial: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # when admitted
    rollback_serial: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class ServerState(Base):
    """Named integers the server keeps about itself, e.g. ``serial_floor``: the lowest
    serial a new manifest may carry, raised by ``kernex server restore``."""

    __tablename__ = "server_state"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger)


class AlertOutbox(Base):
    """One alert for one receiver, kept until delivered (or given up): the durable outbox
    the alert loop delivers from (kernex_server.alerts). ``key`` is the idempotency key
    the receiver sees on every attempt."""

    __tablename__ = "alert_outbox"
    __table_args__ = (UniqueConstraint("receiver", "key", name="uq_alert_outbox_receiver_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    receiver: Mapped[str] = mapped_column(String(64))
    key: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(32))
    alert: Mapped[dict[str, Any]] = mapped_column(JSON)  # summary, detail, created_at
    state: Mapped[str] = mapped_column(String(16), index=True)  # pending | delivered | failed
    created_at: Mapped[float] = mapped_column(Float)
    due_at: Mapped[float] = mapped_column(Float, index=True)  # next attempt (or group close)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    claimed_until: Mapped[float | None] = mapped_column(Float, nullable=True)
    delivered_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class User(Base):
    """A person who signs in to the dashboard (kernex_server.accounts): an argon2 password
    hash, a role like a token's, and the failed-login count that locks the account."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[float] = mapped_column(Float)
    created_by: Mapped[str | None] = mapped_column(String(120), nullable=True)
    password_changed_at: Mapped[float] = mapped_column(Float)  # older sessions end
    disabled_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    failed_logins: Mapped[int] = mapped_column(Integer, default=0)  # since the last success
    locked_until: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_login_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class RequestNonce(Base):
    """A signed device request that changed state, by SHA-256 of key id and nonce, until
    its replay window ends: shared by every server process (kernex_server.nonces). On
    PostgreSQL the table is UNLOGGED (a crash empties it; the window is minutes)."""

    __tablename__ = "request_nonces"

    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[float] = mapped_column(Float, index=True)
