"""The device protocol: paths, phases and the JSON bodies agent and server exchange.

    POST /v1/enroll                        EnrollRequest -> EnrollResponse (signed by the new key)
    GET  /v1/devices/{id}/manifest?wait=N  DSSE envelope; ETag, If-None-Match, 304 on timeout
    POST /v1/devices/{id}/status           StatusReport -> 204
    GET  /v1/bundles/{sha256}              bundle bytes; Range, ETag

Every request, enrollment included, is signed with the device key (``httpsig``); the
enrollment request proves possession of the key it enrolls.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

ENROLL_PATH = "/v1/enroll"
MANIFEST_PATH = "/v1/devices/{device_id}/manifest"
STATUS_PATH = "/v1/devices/{device_id}/status"
BUNDLE_PATH = "/v1/bundles/{sha256}"
MAX_WAIT_SECONDS = 60
MAX_LOG_TAIL_BYTES = 16 * 1024
MAX_ERROR_CHARS = 4096
MAX_NAME_CHARS = 256  # bundle names, versions, revision, agent version in a status report
DEVICE_ID_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}\Z"  # \Z: "$" allows a final newline


class Phase(StrEnum):
    IDLE = "idle"
    DOWNLOADING = "downloading"
    INSTALLING = "installing"
    HEALTHY = "healthy"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"


class EnrollmentState(StrEnum):
    PENDING = "pending"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    REVOKED = "revoked"


@dataclass(frozen=True)
class EnrollRequest:
    device_id: str
    public_key: str  # PEM SubjectPublicKeyInfo
    labels: Mapping[str, str] = field(default_factory=dict)
    agent_version: str = ""
    enrollment_token: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "public_key": self.public_key,
            "labels": dict(self.labels),
            "agent_version": self.agent_version,
            "enrollment_token": self.enrollment_token,
        }

    @classmethod
    def from_dict(cls, data: Any) -> EnrollRequest:
        if not isinstance(data, Mapping):
            raise ValueError("enrollment body must be a JSON object")
        device_id, public_key = data.get("device_id"), data.get("public_key")
        labels = data.get("labels") or {}
        token = data.get("enrollment_token")
        if not isinstance(device_id, str) or not isinstance(public_key, str):
            raise ValueError("enrollment needs string 'device_id' and 'public_key'")
        if not isinstance(labels, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
        ):
            raise ValueError("'labels' must map strings to strings")
        if token is not None and not isinstance(token, str):
            raise ValueError("'enrollment_token' must be a string")
        return cls(device_id, public_key, dict(labels), str(data.get("agent_version") or ""), token)


@dataclass(frozen=True)
class EnrollResponse:
    device_id: str
    state: EnrollmentState
    manifest_public_key: str  # PEM of the server's manifest key
    manifest_key_id: str  # its fingerprint, for pinning and for operators to compare

    def to_dict(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "state": self.state.value,
            "manifest_public_key": self.manifest_public_key,
            "manifest_key_id": self.manifest_key_id,
        }

    @classmethod
    def from_dict(cls, data: Any) -> EnrollResponse:
        if not isinstance(data, Mapping):
            raise ValueError("enrollment response must be a JSON object")
        return cls(
            device_id=str(data["device_id"]),
            state=EnrollmentState(data["state"]),
            manifest_public_key=str(data["manifest_public_key"]),
            manifest_key_id=str(data["manifest_key_id"]),
        )


@dataclass(frozen=True)
class StatusReport:
    phase: Phase
    serial: int | None = None  # manifest serial this report is about
    revision: str | None = None
    bundles: Mapping[str, str] = field(default_factory=dict)  # installed name -> version
    config_hash: str | None = None
    error: str | None = None
    log_tail: str | None = None
    agent_version: str = ""
    reported_at: str | None = None  # RFC 3339, when the agent made the report (queued ones)

    def to_dict(self) -> dict[str, Any]:
        return {
            "phase": self.phase.value,
            "serial": self.serial,
            "revision": self.revision,
            "bundles": dict(self.bundles),
            "config_hash": self.config_hash,
            "error": self.error,
            "log_tail": self.log_tail,
            "agent_version": self.agent_version,
            "reported_at": self.reported_at,
        }

    @classmethod
    def from_dict(cls, data: Any) -> StatusReport:
        if not isinstance(data, Mapping):
            raise ValueError("status body must be a JSON object")
        try:
            phase = Phase(str(data.get("phase")))
        except ValueError as exc:
            raise ValueError(f"'phase' must be one of {', '.join(p.value for p in Phase)}") from exc
        serial = data.get("serial")
        if serial is not None and (not isinstance(serial, int) or isinstance(serial, bool)):
            raise ValueError("'serial' must be an integer")
        bundles = data.get("bundles") or {}
        if not isinstance(bundles, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in bundles.items()
        ):
            raise ValueError("'bundles' must map bundle names to versions")
        for name in ("revision", "config_hash", "error", "log_tail", "reported_at"):
            if data.get(name) is not None and not isinstance(data.get(name), str):
                raise ValueError(f"'{name}' must be a string")
        # Names and versions end up in tables and logs: printable and short, unlike the
        # error and log tail, which are free text (the CLI shows them inertly).
        short_fields = {
            **{f"bundle name {k!r}": k for k in bundles},
            **{f"version of bundle {k!r}": v for k, v in bundles.items()},
            **{name: data.get(name) for name in ("revision", "config_hash", "reported_at")},
            "agent_version": data.get("agent_version"),
        }
        for what, value in short_fields.items():
            if isinstance(value, str) and (len(value) > MAX_NAME_CHARS or not value.isprintable()):
                raise ValueError(f"{what} must be at most {MAX_NAME_CHARS} printable characters")
        error = data.get("error")
        log_tail = data.get("log_tail")
        return cls(
            phase=phase,
            serial=serial,
            revision=data.get("revision"),
            bundles=dict(bundles),
            config_hash=data.get("config_hash"),
            error=error[:MAX_ERROR_CHARS] if error else error,
            log_tail=log_tail[-MAX_LOG_TAIL_BYTES:] if log_tail else log_tail,
            agent_version=str(data.get("agent_version") or ""),
            reported_at=data.get("reported_at"),
        )
