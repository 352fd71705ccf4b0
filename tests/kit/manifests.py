"""Manifests for the core's unit tests: one valid manifest to vary, a verifier pinning a key."""

from __future__ import annotations

from dataclasses import replace

from kernex_core import keys
from kernex_core.manifest import BundleEntry, Manifest
from kernex_core.trust import ManifestVerifier

NOW = 1_800_000_000
SHA = "c" * 64


def make_manifest(**changes: object) -> Manifest:
    base = Manifest(
        device_id="dev-1",
        serial=5,
        revision="0" * 40,
        issued_at=NOW - 10,
        expires_at=NOW + 3600,
        bundles=(BundleEntry("app", "1.0.0", SHA, 1234, f"/v1/bundles/{SHA}"),),
        config={"log": {"level": "info"}},
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def pinned(*private: keys.PrivateKey) -> dict[str, keys.PublicKey]:
    return {keys.fingerprint(k.public_key()): k.public_key() for k in private}


def verifier(server_key: keys.PrivateKey, min_serial: int = 5) -> ManifestVerifier:
    return ManifestVerifier("dev-1", pinned(server_key), min_serial)
