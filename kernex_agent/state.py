"""What the agent persists: its state file and its install journal.

``state.json`` holds the trust anchors (pinned keys, highest serial accepted), the ETag and
summary of the last accepted manifest, what is installed (bundle -> version, sha256, slot)
and the serial that failed last (so it is not retried in a tight loop).

``journal.json`` holds the install transaction in progress, step by step. Each write is
atomic (temp file, fsync, rename, fsync of the folder), so after a crash the next start
reads exactly the last step that completed (see ``Agent.recover``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kernex_agent.errors import AgentStateError

# Steps of one bundle inside a transaction, in order.
BUNDLE_STEPS = ("planned", "downloaded", "unpacked", "installed", "health_ok", "switched")
# Steps of the transaction as a whole.
TXN_BEGUN = "begun"
TXN_CONFIG_WRITTEN = "config_written"
TXN_REMOVED = "removed"
TXN_COMMITTED = "committed"
TXN_ROLLED_BACK = "rolled_back"
TERMINAL = (TXN_COMMITTED, TXN_ROLLED_BACK)
# Every step after which a crash can be injected (KERNEX_AGENT_CRASH_AT), in order.
CRASH_POINTS = (
    TXN_BEGUN,
    "downloaded",
    "unpacked",
    "installed",
    "health_ok",
    "switched",
    TXN_CONFIG_WRITTEN,
    TXN_REMOVED,
    TXN_COMMITTED,
)


@dataclass
class InstalledBundle:
    name: str
    version: str
    sha256: str
    slot: str

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InstalledBundle:
        return cls(str(data["name"]), str(data["version"]), str(data["sha256"]), str(data["slot"]))


@dataclass
class FailedSerial:
    serial: int
    digest: str
    attempts: int
    retry_at: float  # unix seconds


@dataclass
class AgentState:
    trust: dict[str, Any]  # TrustAnchors.to_dict()
    etag: str | None = None
    last_manifest: dict[str, Any] | None = None  # serial, revision, expires_at, digest
    applied_serial: int | None = None
    applied_revision: str | None = None
    applied_digest: str | None = None  # Manifest.desired_digest() of what is installed
    config_hash: str | None = None
    installed: dict[str, InstalledBundle] = field(default_factory=dict)
    failed: FailedSerial | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["installed"] = {k: asdict(v) for k, v in sorted(self.installed.items())}
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AgentState:
        failed = data.get("failed")
        return cls(
            trust=dict(data.get("trust") or {}),
            etag=data.get("etag"),
            last_manifest=data.get("last_manifest"),
            applied_serial=data.get("applied_serial"),
            applied_revision=data.get("applied_revision"),
            applied_digest=data.get("applied_digest"),
            config_hash=data.get("config_hash"),
            installed={
                k: InstalledBundle.from_dict(v) for k, v in (data.get("installed") or {}).items()
            },
            failed=FailedSerial(**failed) if failed else None,
        )

    def bundle_versions(self) -> dict[str, str]:
        return {k: v.version for k, v in sorted(self.installed.items())}


@dataclass
class BundleStep:
    name: str
    version: str
    sha256: str
    size: int
    url: str
    slot: str  # the new slot's directory name
    prev_slot: str | None  # what `current` pointed at before (None: first install)
    prev_version: str | None
    step: str = "planned"

    def reached(self, step: str) -> bool:
        return BUNDLE_STEPS.index(self.step) >= BUNDLE_STEPS.index(step)


@dataclass
class Journal:
    serial: int
    revision: str
    digest: str
    config_hash: str
    step: str = TXN_BEGUN
    bundles: list[BundleStep] = field(default_factory=list)
    removals: list[str] = field(default_factory=list)
    config_changed: bool = False
    hooks_started: bool = False  # an install hook ran: failure means roll back, not just fail
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Journal:
        bundles = [BundleStep(**b) for b in data.get("bundles", [])]
        rest = {k: v for k, v in data.items() if k != "bundles"}
        return cls(bundles=bundles, **rest)

    @property
    def done(self) -> bool:
        return self.step in TERMINAL


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise AgentStateError(
            f"cannot read {path}: {exc}",
            hint="The file is written atomically, so this means outside damage; restore it "
            "from a backup or re-enroll the device.",
        ) from exc
    if not isinstance(data, dict):
        raise AgentStateError(f"{path} is not a JSON object")
    return data


def dump_json(data: Any) -> bytes:
    # One line: ``indent`` makes json use its pure-Python encoder, several times slower,
    # and the agent rewrites its journal and state at every step of an install.
    return json.dumps(data, sort_keys=True, separators=(", ", ": ")).encode() + b"\n"
