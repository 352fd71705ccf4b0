"""The fleet's values: catalog entries, groups, devices, settings and desired state.

All are frozen dataclasses built by ``load_fleet``; ``Fleet`` (in ``resolve``) holds them
and answers "what must this device run".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kernex_core.canonical import canonical_digest
from kernex_core.envelope import Signature
from kernex_core.fleet.selector import Selector

API_VERSION = "kernex/v1"


@dataclass(frozen=True)
class BundleVersion:
    """One catalog entry: the exact bytes a version of a bundle is."""

    name: str
    version: str
    sha256: str
    size: int
    release_signatures: tuple[Signature, ...] = ()
    url: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "sha256": self.sha256,
            "size": self.size,
            "url": self.url,
            "release_signatures": [s.to_dict() for s in self.release_signatures],
        }


@dataclass(frozen=True)
class RolloutPolicy:
    """How a change to a group reaches its devices: in waves, watched for failures."""

    waves: tuple[int, ...] = (100,)  # cumulative percent of the group's devices, last is 100
    failure_threshold: int = 10  # percent of a wave's devices failing that halts the rollout
    pause: int = 0  # seconds between healthy waves (automatic promotion)
    promotion: str = "auto"  # "auto" after the pause, or "manual" (`kernex rollouts promote`)
    auto_rollback: bool = False  # on halt, serve the previous state to devices that moved

    def to_dict(self) -> dict[str, Any]:
        return {
            "waves": list(self.waves),
            "failure_threshold": self.failure_threshold,
            "pause": self.pause,
            "promotion": self.promotion,
            "auto_rollback": self.auto_rollback,
        }


@dataclass(frozen=True)
class TrustedSigner:
    """A key whose signed commits the server deploys (when signed commits are required)."""

    name: str
    key: str  # an SSH public key line, or an OpenPGP fingerprint (40 hex digits)


@dataclass(frozen=True)
class Defaults:
    bundles: Mapping[str, str | None] = field(default_factory=dict)
    config: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FleetSettings:
    name: str = ""
    # None: not set in kernex.yaml, so the server's own setting (server.toml) applies.
    offline_after: int | None = None
    manifest_ttl: int | None = None
    defaults: Defaults = field(default_factory=Defaults)
    rollout: RolloutPolicy | None = None
    trusted_signers: tuple[TrustedSigner, ...] = ()


@dataclass(frozen=True)
class Group:
    name: str
    selector: Selector
    priority: int = 0
    bundles: Mapping[str, str | None] = field(default_factory=dict)  # None removes a bundle
    config: Mapping[str, Any] = field(default_factory=dict)
    rollout: RolloutPolicy | None = None  # the group's block over the fleet's defaults


@dataclass(frozen=True)
class DeviceSpec:
    id: str
    labels: Mapping[str, str] = field(default_factory=dict)
    key_fingerprint: str | None = None
    bundles: Mapping[str, str | None] = field(default_factory=dict)
    config: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DesiredState:
    """What one device must run. Treat the mappings as read-only: devices share them."""

    bundles: Mapping[str, BundleVersion]
    config: Mapping[str, Any]
    groups: tuple[str, ...]  # matching groups, in the order they applied

    def to_dict(self) -> dict[str, Any]:
        return {
            "bundles": {name: b.to_dict() for name, b in sorted(self.bundles.items())},
            "config": _plain(self.config),
            "groups": list(self.groups),
        }

    def digest(self) -> str:
        """Digest of bundles and config (not groups): changes exactly when the device must."""
        return canonical_digest(
            {
                "bundles": {name: b.to_dict() for name, b in self.bundles.items()},
                "config": _plain(self.config),
            }
        )


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
