"""The agent's trust anchors and the pure rules that update them.

``TrustAnchors`` holds what the device trusts: the pinned manifest keys, the pinned
release-key set (or none) and the highest serial accepted. ``accept_manifest`` takes the
raw manifest bytes and a clock reading and returns the manifest and the next anchors, or
raises ``ManifestRejectedError``. It does no I/O; the agent persists the result.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from kernex_core import keys
from kernex_core.envelope import Envelope
from kernex_core.errors import EnvelopeError
from kernex_core.manifest import (
    Manifest,
    ManifestVerifier,
    check_release_signatures,
    manifest_keys_from,
)
from kernex_core.release import ReleaseKeySet, accept_release_key_set

log = logging.getLogger("kernex.agent")


@dataclass(frozen=True)
class TrustAnchors:
    device_id: str
    manifest_keys: Mapping[str, keys.PublicKey]
    release_keys: ReleaseKeySet | None = None
    highest_serial: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "manifest_keys": {
                kid: keys.public_key_to_pem(k) for kid, k in sorted(self.manifest_keys.items())
            },
            "release_keys": self.release_keys.to_dict() if self.release_keys else None,
            "highest_serial": self.highest_serial,
        }

    @classmethod
    def from_dict(cls, device_id: str, data: Mapping[str, Any]) -> TrustAnchors:
        mkeys = {
            kid: keys.load_public_key_pem(pem, source=f"pinned manifest key {kid}")
            for kid, pem in dict(data.get("manifest_keys") or {}).items()
        }
        rk = data.get("release_keys")
        return cls(
            device_id=device_id,
            manifest_keys=mkeys,
            release_keys=ReleaseKeySet.from_dict(rk) if rk else None,
            highest_serial=int(data.get("highest_serial") or 0),
        )

    @property
    def trust_mode(self) -> str:
        return "manifest+release" if self.release_keys else "manifest-only"


def accept_manifest(raw: bytes, anchors: TrustAnchors, now: float) -> tuple[Manifest, TrustAnchors]:
    """Verify ``raw`` under ``anchors``; return the manifest and the anchors to persist."""
    verifier = ManifestVerifier(
        device_id=anchors.device_id,
        manifest_keys=anchors.manifest_keys,
        min_serial=anchors.highest_serial,
    )
    manifest = verifier.verify(raw, now)
    release = _rotate_release_keys(manifest, anchors.release_keys)
    if release is not None:
        check_release_signatures(manifest, release.keys, release.threshold)
    manifest_keys = dict(anchors.manifest_keys)
    if manifest.manifest_keys:
        # Rotation: a manifest signed by a pinned key names the keys to trust from now on.
        manifest_keys = manifest_keys_from(manifest)
    return manifest, replace(
        anchors,
        manifest_keys=manifest_keys,
        release_keys=release,
        highest_serial=max(anchors.highest_serial, manifest.serial),
    )


def _rotate_release_keys(manifest: Manifest, current: ReleaseKeySet | None) -> ReleaseKeySet | None:
    """A new release-key set only if a pinned release key signed it; never without one."""
    if current is None or manifest.release_keys is None:
        return current
    try:
        return accept_release_key_set(Envelope.from_dict(manifest.release_keys), current)
    except EnvelopeError as exc:
        # Every manifest keeps carrying the set a device may already hold: not an attack.
        log.debug("release-key set in manifest %s not accepted: %s", manifest.serial, exc)
        return current
