"""The keys the server hands to devices, and their rotation (docs/security.md).

Manifest key, in two steps, so that no device is ever left trusting only a key the
server no longer signs with:

1. ``begin``: a new key is made (``keys/manifest.next.key``). Every manifest, still
   signed by the current key, announces both keys (``manifest_keys``); every device's
   manifest is re-issued under a new serial, so each device takes the new key from a
   manifest its pinned key signed. A device has moved once it reports that serial.
2. ``finish``: the new key becomes ``keys/manifest.key`` and signs; manifests announce it
   alone, so devices drop the old key; the old private key is deleted. ``finish``
   refuses while an accepted device has not moved (unless forced: such a device then
   rejects every manifest until it is enrolled again).

Release keys live off the server: ``kernex keys rotate-release-key`` signs a new
release-key set with the current release key(s) and uploads it. The server keeps the
newest set (``keys/release-keys.json``), checks that the set it held signed it, and every
manifest carries it; a device replaces its pinned set only when its pinned release keys
signed the new one with a higher version (``kernex_core.trust``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from kernex_core import keys
from kernex_core.envelope import Envelope
from kernex_core.errors import EnvelopeError, KernexError
from kernex_core.fsutil import atomic_write_bytes, atomic_write_text
from kernex_core.protocol import EnrollmentState
from kernex_core.release import RELEASE_KEYS_PAYLOAD_TYPE, ReleaseKeySet
from kernex_core.trust import accept_release_key_set
from kernex_server.manifests import ManifestIssuer, ServedManifest
from kernex_server.models import Deployment, Device, DeviceManifest, DeviceStatus
from kernex_server.serials import read_floor, reissue

NEXT_KEY = "manifest.next.key"
ROTATION = "rotation.json"
RELEASE_SET = "release-keys.json"


class KeyRotationError(KernexError):
    def __init__(self, message: str, *, hint: str | None = None, status: int = 409) -> None:
        super().__init__(message, hint=hint)
        self.status = status


class Keyring:
    """The manifest signing key, the key being rotated in and the release-key set, as
    files under ``<data_dir>/keys``; applied to the ``ManifestIssuer`` on every change."""

    def __init__(self, keys_dir: Path, issuer: ManifestIssuer) -> None:
        self.dir = keys_dir
        self.issuer = issuer
        self.next: keys.PrivateKey | None = None
        self.started_at: float | None = None
        self.release: dict[str, Any] | None = None
        next_path = self.dir / NEXT_KEY
        if next_path.is_file():
            self.next = keys.load_private_key_pem(next_path.read_bytes(), source=str(next_path))
            rotation = self._read_json(ROTATION) or {}
            self.started_at = float(rotation.get("started_at") or 0)
        self.release = self._read_json(RELEASE_SET)
        self._apply()

    @property
    def signing(self) -> keys.PrivateKey:
        return self.issuer.key

    def _read_json(self, name: str) -> dict[str, Any] | None:
        path = self.dir / name
        if not path.is_file():
            return None
        data = json.loads(path.read_text("utf-8"))
        return data if isinstance(data, dict) else None

    def _apply(self) -> None:
        announced = [self.signing.public_key()]
        if self.next is not None:
            announced.append(self.next.public_key())
        self.issuer.announce = tuple(
            (keys.fingerprint(k), keys.public_key_to_pem(k)) for k in announced
        )
        self.issuer.release_keys = self.release

    # -- manifest key --------------------------------------------------------------------

    def begin(self, now: float) -> None:
        if self.next is not None:
            raise KeyRotationError(
                f"a manifest-key rotation to {keys.fingerprint(self.next.public_key())} "
                "is in progress",
                hint="Finish it first: `kernex keys rotate-manifest-key --finish`.",
            )
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        new = keys.generate_ed25519()
        atomic_write_text(self.dir / ROTATION, json.dumps({"started_at": now}), mode=0o600)
        atomic_write_bytes(self.dir / NEXT_KEY, keys.private_key_to_pem(new), mode=0o600)
        self.next, self.started_at = new, now
        self._apply()

    def finish(self) -> keys.PrivateKey:
        """Make the new key the signing key; return the retired one."""
        if self.next is None:
            raise KeyRotationError(
                "no manifest-key rotation is in progress",
                hint="Start one: `kernex keys rotate-manifest-key`.",
            )
        old, new = self.signing, self.next
        atomic_write_bytes(self.dir / "manifest.key", keys.private_key_to_pem(new), mode=0o600)
        (self.dir / NEXT_KEY).unlink()
        (self.dir / ROTATION).unlink(missing_ok=True)
        self.issuer.key, self.next, self.started_at = new, None, None
        self._apply()
        return old

    # -- release keys --------------------------------------------------------------------

    def set_release(self, data: Mapping[str, Any]) -> ReleaseKeySet:
        """Keep a new release-key set (a DSSE envelope as a dict) for every manifest."""
        try:
            envelope = Envelope.from_dict(data)
            if self.release is not None:
                current = ReleaseKeySet.from_dict(
                    json.loads(Envelope.from_dict(self.release).payload)
                )
                new = accept_release_key_set(envelope, current)
            else:
                if envelope.payload_type != RELEASE_KEYS_PAYLOAD_TYPE or not envelope.signatures:
                    raise EnvelopeError("a release-key set must be a signed DSSE envelope")
                new = ReleaseKeySet.from_dict(json.loads(envelope.payload))
        except (EnvelopeError, ValueError) as exc:
            raise KeyRotationError(
                f"release-key set refused: {exc}",
                hint="Sign the new set with the current release key(s) "
                "(`kernex keys rotate-release-key --sign-key CURRENT.key`).",
                status=400,
            ) from exc
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        atomic_write_text(self.dir / RELEASE_SET, json.dumps(dict(data)), mode=0o600)
        self.release = dict(data)
        self._apply()
        return new

    def release_summary(self) -> dict[str, Any] | None:
        if self.release is None:
            return None
        rset = ReleaseKeySet.from_dict(json.loads(Envelope.from_dict(self.release).payload))
        return {"version": rset.version, "threshold": rset.threshold, "keys": sorted(rset.keys)}


def reissue_all(
    s: Session, issuer: ManifestIssuer, *, now: float, ttl: int
) -> list[ServedManifest]:
    """Every device's manifest again, same content, under a new serial and the current
    announcements (a rotation devices must see)."""
    floor = read_floor(s)
    rows = s.scalars(select(DeviceManifest)).all()
    return [reissue(s, issuer, row, max(row.serial + 1, floor), now=now, ttl=ttl) for row in rows]


def not_moved(s: Session, since: float) -> list[str]:
    """Accepted devices that have not reported a manifest issued at or after ``since``
    (during a manifest-key rotation: the devices that may not know the new key yet). A
    device with no such manifest at all has not moved either."""
    first = dict(
        s.execute(
            select(Deployment.device_id, func.min(Deployment.serial))
            .where(Deployment.created_at >= since)
            .group_by(Deployment.device_id)
        ).all()
    )
    reported = dict(s.execute(select(DeviceStatus.device_id, DeviceStatus.serial)).all())
    accepted = s.scalars(
        select(Device.id).where(Device.state == EnrollmentState.ACCEPTED.value)
    ).all()
    return sorted(d for d in accepted if d not in first or (reported.get(d) or 0) < first[d])
