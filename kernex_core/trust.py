"""The device's trust rules, as pure objects fed bytes and a clock reading.

``TrustAnchors`` is what a device trusts: the pinned manifest keys, the pinned release-key
set (or none) and the highest serial accepted. ``accept_manifest`` takes the raw manifest
bytes, the anchors and a clock reading and returns the manifest and the anchors to persist
next, or raises ``ManifestRejectedError`` naming the rule that failed:

- ``ManifestVerifier``: size, envelope format, a pinned manifest key's signature, this
  device's id, a serial no lower than the highest accepted, not expired;
- ``check_release_signatures``: with release keys pinned, every bundle carries enough
  valid release signatures over its exact name, version, sha256 and size;
- rotation: a manifest signed by a pinned key may name the manifest keys to trust from
  now on (``manifest_keys_from``); a release-key set replaces the pinned one only when the
  pinned release keys signed it with a higher version (``accept_release_key_set``), as TUF
  rotates its root.

Nothing here does I/O; the agent fetches and persists around it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from kernex_core import keys
from kernex_core.envelope import Envelope, verify_envelope
from kernex_core.errors import (
    EnvelopeError,
    KeyFormatError,
    ManifestRejectedError,
    ReleaseSignatureError,
)
from kernex_core.manifest import MANIFEST_PAYLOAD_TYPE, MAX_MANIFEST_BYTES, Manifest
from kernex_core.release import RELEASE_KEYS_PAYLOAD_TYPE, ReleaseKeySet, verify_release
from kernex_core.timefmt import format_time

log = logging.getLogger("kernex.agent.trust")


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
    verifier = ManifestVerifier(anchors.device_id, anchors.manifest_keys, anchors.highest_serial)
    manifest = verifier.verify(raw, now)
    release = _rotate_release_keys(manifest, anchors.release_keys)
    if release is not None:
        check_release_signatures(manifest, release.keys, release.threshold)
    manifest_keys = dict(anchors.manifest_keys)
    if manifest.manifest_keys:
        manifest_keys = manifest_keys_from(manifest)
    return manifest, replace(
        anchors,
        manifest_keys=manifest_keys,
        release_keys=release,
        highest_serial=max(anchors.highest_serial, manifest.serial),
    )


@dataclass(frozen=True)
class ManifestVerifier:
    """The manifest rules: ``manifest_keys`` are the pinned server keys (keyid -> key),
    ``min_serial`` the highest serial accepted before."""

    device_id: str
    manifest_keys: Mapping[str, keys.PublicKey]
    min_serial: int = 0

    def verify(self, raw: bytes, now: float) -> Manifest:
        if len(raw) > MAX_MANIFEST_BYTES:
            raise ManifestRejectedError(
                "size", f"manifest of {len(raw)} bytes exceeds the {MAX_MANIFEST_BYTES} byte limit"
            )
        try:
            envelope = Envelope.from_json(raw, max_bytes=MAX_MANIFEST_BYTES)
        except EnvelopeError as exc:
            raise ManifestRejectedError("format", f"manifest envelope: {exc}") from exc
        try:
            verify_envelope(envelope, self.manifest_keys, payload_type=MANIFEST_PAYLOAD_TYPE)
        except EnvelopeError as exc:
            raise ManifestRejectedError(
                "signature",
                f"manifest signature: {exc}",
                hint="The manifest was not signed by the pinned server key; re-enroll only "
                "if the server key was rotated on purpose.",
            ) from exc
        try:
            manifest = Manifest.from_dict(json.loads(envelope.payload))
        except (ValueError, UnicodeDecodeError) as exc:
            raise ManifestRejectedError("format", f"manifest payload: {exc}") from exc
        except RecursionError as exc:
            raise ManifestRejectedError("format", "manifest payload is nested too deeply") from exc
        if manifest.device_id != self.device_id:
            raise ManifestRejectedError(
                "device", f"manifest is for device {manifest.device_id!r}, not {self.device_id!r}"
            )
        if manifest.serial < self.min_serial:
            raise ManifestRejectedError(
                "serial",
                f"manifest serial {manifest.serial} is lower than {self.min_serial}, the "
                "highest accepted (rollback attack or server state lost)",
            )
        if now >= manifest.expires_at:
            raise ManifestRejectedError(
                "expired",
                f"manifest expired at {format_time(manifest.expires_at)} "
                f"(now {format_time(now)}): freeze attack or a server that stopped signing",
                hint="Check the device clock and that the server is re-signing manifests.",
            )
        return manifest


def check_release_signatures(
    manifest: Manifest, release_keys: Mapping[str, keys.PublicKey], threshold: int
) -> None:
    """Every bundle must be signed by ``threshold`` of the pinned release keys."""
    for bundle in manifest.bundles:
        try:
            verify_release(
                bundle.release_signatures,
                release_keys,
                name=bundle.name,
                version=bundle.version,
                sha256=bundle.sha256,
                size=bundle.size,
                threshold=threshold,
            )
        except ReleaseSignatureError as exc:
            raise ManifestRejectedError("release", str(exc), hint=exc.hint) from exc


def manifest_keys_from(manifest: Manifest) -> dict[str, keys.PublicKey]:
    """The announced manifest keys (for rotation), checked against their keyids."""
    out: dict[str, keys.PublicKey] = {}
    for keyid, pem in manifest.manifest_keys:
        try:
            key = keys.load_public_key_pem(pem, source="announced manifest key")
        except KeyFormatError as exc:
            raise ManifestRejectedError("format", str(exc)) from exc
        if keys.fingerprint(key) != keyid:
            raise ManifestRejectedError("format", f"announced key does not match id {keyid}")
        out[keyid] = key
    return out


def accept_release_key_set(envelope: Envelope, current: ReleaseKeySet) -> ReleaseKeySet:
    """Return the new key set if ``current`` signed it with a higher version; else raise."""
    verify_envelope(
        envelope,
        current.keys,
        payload_type=RELEASE_KEYS_PAYLOAD_TYPE,
        threshold=current.threshold,
    )
    try:
        new = ReleaseKeySet.from_dict(json.loads(envelope.payload))
    except (ValueError, RecursionError) as exc:
        raise EnvelopeError(f"release key set payload is not JSON: {exc}") from exc
    if new.version <= current.version:
        raise EnvelopeError(
            f"release key set version {new.version} is not newer than {current.version}"
        )
    return new


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
