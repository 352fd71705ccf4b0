"""The manifest format: its wire form round trip and the digest of the desired state.

The rules a device checks a manifest by are tested in test_core_trust.py."""

from __future__ import annotations

from kit.manifests import NOW, make_manifest, verifier

from kernex_core import keys
from kernex_core.manifest import sign_manifest


def test_round_trip_through_the_wire_format() -> None:
    server_key = keys.generate_ed25519()
    manifest = make_manifest()
    raw = sign_manifest(manifest, server_key).to_json()
    got = verifier(server_key).verify(raw, NOW)
    assert got == manifest
    assert got.payload() == manifest.payload()  # canonical: same content, same bytes


def test_desired_digest_ignores_serial_and_times() -> None:
    a = make_manifest()
    b = make_manifest(serial=9, issued_at=NOW, expires_at=NOW + 99)
    assert a.desired_digest() == b.desired_digest()
    assert a.desired_digest() != make_manifest(config={"log": {"level": "debug"}}).desired_digest()
