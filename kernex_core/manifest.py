"""Manifests: the signed desired state of one device (the trust rules that check one are in
``kernex_core.trust``).

Wire form: a DSSE envelope (payload type ``application/vnd.kernex.manifest+json``) whose
payload is the canonical JSON of ``Manifest.to_dict()``::

    {"device_id": "dev-1", "serial": 7, "revision": "<commit sha>",
     "issued_at": "2026-11-22T02:05:37Z", "expires_at": "2026-11-29T02:05:37Z",
     "rollout_id": null,
     "bundles": [{"name": "app", "version": "1.4.0", "sha256": "<hex>", "size": 1234,
                  "url": "/v1/bundles/<hex>", "release_signatures": [{"keyid":..,"sig":..}]}],
     "config": {...},
     "manifest_keys": [{"keyid": "SHA256:..", "public_key": "PEM"}],   # optional: rotation
     "release_keys": {<DSSE envelope of a release-key set>}}            # optional: rotation
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kernex_core import keys
from kernex_core.canonical import canonical_digest, canonical_json
from kernex_core.envelope import Envelope, Signature, sign_envelope
from kernex_core.errors import (
    EnvelopeError,
)
from kernex_core.formats import NAME_RE, SHA256_RE, VERSION_RE
from kernex_core.timefmt import format_time, parse_time

MANIFEST_PAYLOAD_TYPE = "application/vnd.kernex.manifest+json"
MAX_MANIFEST_BYTES = 1024 * 1024
MAX_BUNDLES = 256


@dataclass(frozen=True)
class BundleEntry:
    name: str
    version: str
    sha256: str
    size: int
    url: str
    release_signatures: tuple[Signature, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "sha256": self.sha256,
            "size": self.size,
            "url": self.url,
            "release_signatures": [s.to_dict() for s in self.release_signatures],
        }

    @classmethod
    def from_dict(cls, data: Any) -> BundleEntry:
        if not isinstance(data, Mapping):
            raise ValueError("bundle entry is not an object")
        name, version, sha, size, url = (
            data.get(k) for k in ("name", "version", "sha256", "size", "url")
        )
        if not all(isinstance(v, str) and v for v in (name, version, url)):
            raise ValueError("bundle entry needs non-empty 'name', 'version' and 'url'")
        # The device uses both as path components: refuse anything but the bundle rules.
        if not NAME_RE.match(str(name)):
            raise ValueError(f"bundle name {name!r} is not a valid bundle name")
        if not VERSION_RE.match(str(version)):
            raise ValueError(f"bundle {name}: version {version!r} is not a valid version")
        if not isinstance(sha, str) or not SHA256_RE.match(sha):
            raise ValueError(f"bundle {name}: sha256 must be 64 lowercase hex digits")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError(f"bundle {name}: size must be a non-negative integer")
        sigs = data.get("release_signatures", [])
        if not isinstance(sigs, list):
            raise ValueError(f"bundle {name}: release_signatures must be a list")
        try:
            parsed = tuple(Signature.from_dict(s) for s in sigs)
        except EnvelopeError as exc:
            raise ValueError(f"bundle {name}: {exc}") from exc
        return cls(str(name), str(version), sha, size, str(url), parsed)


@dataclass(frozen=True)
class Manifest:
    device_id: str
    serial: int
    revision: str
    issued_at: int
    expires_at: int
    bundles: tuple[BundleEntry, ...]
    config: Mapping[str, Any]
    rollout_id: str | None = None
    manifest_keys: tuple[tuple[str, str], ...] = ()  # (keyid, PEM) announced for rotation
    release_keys: Mapping[str, Any] | None = None  # DSSE envelope dict of a release-key set
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "device_id": self.device_id,
            "serial": self.serial,
            "revision": self.revision,
            "issued_at": format_time(self.issued_at),
            "expires_at": format_time(self.expires_at),
            "rollout_id": self.rollout_id,
            "bundles": [b.to_dict() for b in self.bundles],
            "config": dict(self.config),
        }
        if self.manifest_keys:
            out["manifest_keys"] = [{"keyid": k, "public_key": p} for k, p in self.manifest_keys]
        if self.release_keys is not None:
            out["release_keys"] = dict(self.release_keys)
        return out

    def payload(self) -> bytes:
        return canonical_json(self.to_dict())

    def desired_digest(self) -> str:
        """Digest of what the device must run (bundles + config), independent of serial."""
        return canonical_digest(
            {"bundles": [b.to_dict() for b in self.bundles], "config": dict(self.config)}
        )

    def config_hash(self) -> str:
        return canonical_digest(dict(self.config))

    @classmethod
    def from_dict(cls, data: Any) -> Manifest:
        if not isinstance(data, Mapping):
            raise ValueError("manifest payload is not a JSON object")
        device_id, serial, revision = (
            data.get("device_id"),
            data.get("serial"),
            data.get("revision"),
        )
        if not isinstance(device_id, str) or not device_id:
            raise ValueError("manifest needs a string 'device_id'")
        if not isinstance(serial, int) or isinstance(serial, bool) or serial < 0:
            raise ValueError("manifest 'serial' must be a non-negative integer")
        if not isinstance(revision, str):
            raise ValueError("manifest needs a string 'revision'")
        bundles = data.get("bundles", [])
        if not isinstance(bundles, list) or len(bundles) > MAX_BUNDLES:
            raise ValueError(f"manifest 'bundles' must be a list of at most {MAX_BUNDLES}")
        parsed = tuple(BundleEntry.from_dict(b) for b in bundles)
        names = [b.name for b in parsed]
        if len(set(names)) != len(names):
            raise ValueError("manifest names a bundle twice")
        config = data.get("config", {})
        if not isinstance(config, Mapping):
            raise ValueError("manifest 'config' must be an object")
        rollout_id = data.get("rollout_id")
        if rollout_id is not None and not isinstance(rollout_id, str):
            raise ValueError("manifest 'rollout_id' must be a string or null")
        mkeys = data.get("manifest_keys", [])
        if not isinstance(mkeys, list) or not all(
            isinstance(k, Mapping)
            and isinstance(k.get("keyid"), str)
            and isinstance(k.get("public_key"), str)
            for k in mkeys
        ):
            raise ValueError("manifest 'manifest_keys' must be a list of {keyid, public_key}")
        release_keys = data.get("release_keys")
        if release_keys is not None and not isinstance(release_keys, Mapping):
            raise ValueError("manifest 'release_keys' must be an envelope object")
        return cls(
            device_id=device_id,
            serial=serial,
            revision=revision,
            issued_at=parse_time(data.get("issued_at")),  # type: ignore[arg-type]
            expires_at=parse_time(data.get("expires_at")),  # type: ignore[arg-type]
            bundles=parsed,
            config=dict(config),
            rollout_id=rollout_id,
            manifest_keys=tuple((k["keyid"], k["public_key"]) for k in mkeys),
            release_keys=release_keys,
        )


def sign_manifest(manifest: Manifest, key: keys.PrivateKey) -> Envelope:
    keyid = keys.fingerprint(key.public_key())
    return sign_envelope(MANIFEST_PAYLOAD_TYPE, manifest.payload(), {keyid: key})
