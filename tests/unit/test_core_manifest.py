"""The manifest format and the agent's trust rules (ManifestVerifier)."""

from __future__ import annotations

import base64
import json
from dataclasses import replace

import pytest

from kernex_core import keys
from kernex_core.envelope import Envelope
from kernex_core.errors import ManifestRejectedError
from kernex_core.manifest import BundleEntry, Manifest, ManifestVerifier, sign_manifest
from kernex_core.release import sign_release

NOW = 1_800_000_000
SHA = "c" * 64


@pytest.fixture
def server_key() -> keys.PrivateKey:
    return keys.generate_ed25519()


@pytest.fixture
def release_key() -> keys.PrivateKey:
    return keys.generate_ed25519()


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


def verifier(server_key: keys.PrivateKey, **changes: object) -> ManifestVerifier:
    pub = server_key.public_key()
    v = ManifestVerifier(
        device_id="dev-1", manifest_keys={keys.fingerprint(pub): pub}, min_serial=5
    )
    return replace(v, **changes)  # type: ignore[arg-type]


def test_round_trip_through_the_wire_format(server_key: keys.PrivateKey) -> None:
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


def _reason(raw: bytes, v: ManifestVerifier, now: float = NOW) -> str:
    with pytest.raises(ManifestRejectedError) as info:
        v.verify(raw, now)
    return info.value.reason


def test_wrong_key_is_rejected(server_key: keys.PrivateKey) -> None:
    other = keys.generate_ed25519()
    raw = sign_manifest(make_manifest(), other).to_json()
    assert _reason(raw, verifier(server_key)) == "signature"


def test_tampered_payload_is_rejected(server_key: keys.PrivateKey) -> None:
    env = sign_manifest(make_manifest(), server_key)
    data = json.loads(env.payload)
    data["bundles"][0]["sha256"] = "d" * 64
    forged = Envelope(env.payload_type, json.dumps(data).encode(), env.signatures)
    assert _reason(forged.to_json(), verifier(server_key)) == "signature"


def test_other_devices_manifest_is_rejected(server_key: keys.PrivateKey) -> None:
    raw = sign_manifest(make_manifest(device_id="dev-2"), server_key).to_json()
    assert _reason(raw, verifier(server_key)) == "device"


def test_lower_serial_is_rejected_and_equal_is_accepted(server_key: keys.PrivateKey) -> None:
    low = sign_manifest(make_manifest(serial=4), server_key).to_json()
    assert _reason(low, verifier(server_key)) == "serial"
    same = sign_manifest(make_manifest(serial=5), server_key).to_json()
    assert verifier(server_key).verify(same, NOW).serial == 5


def test_expired_manifest_is_rejected(server_key: keys.PrivateKey) -> None:
    raw = sign_manifest(make_manifest(), server_key).to_json()
    assert _reason(raw, verifier(server_key), now=NOW + 3600) == "expired"


def test_oversized_and_malformed_manifests_are_rejected(server_key: keys.PrivateKey) -> None:
    raw = sign_manifest(make_manifest(), server_key).to_json()
    assert _reason(raw, verifier(server_key, max_bytes=100)) == "size"
    assert _reason(b"{", verifier(server_key)) == "format"
    bad_payload = {
        "payload": base64.b64encode(b"[1,2]").decode(),
        "payloadType": "application/vnd.kernex.manifest+json",
        "signatures": [{"keyid": "x", "sig": "eA=="}],
    }
    assert _reason(json.dumps(bad_payload).encode(), verifier(server_key)) == "signature"


def test_release_signatures_are_required_when_release_keys_are_pinned(
    server_key: keys.PrivateKey, release_key: keys.PrivateKey
) -> None:
    rel_pub = release_key.public_key()
    pinned = {keys.fingerprint(rel_pub): rel_pub}
    unsigned = sign_manifest(make_manifest(), server_key).to_json()
    assert _reason(unsigned, verifier(server_key, release_keys=pinned)) == "release"

    sig = sign_release(release_key, "app", "1.0.0", SHA, 1234)
    bundle = BundleEntry("app", "1.0.0", SHA, 1234, f"/v1/bundles/{SHA}", (sig,))
    signed = sign_manifest(make_manifest(bundles=(bundle,)), server_key).to_json()
    assert verifier(server_key, release_keys=pinned).verify(signed, NOW).bundles == (bundle,)

    # The server swaps in other bytes but keeps the release signature: refused.
    swapped = BundleEntry("app", "1.0.0", "e" * 64, 1234, "/v1/bundles/x", (sig,))
    raw = sign_manifest(make_manifest(bundles=(swapped,)), server_key).to_json()
    assert _reason(raw, verifier(server_key, release_keys=pinned)) == "release"


@pytest.mark.parametrize(
    "bundle",
    [
        {"name": "app", "version": "1", "sha256": "XYZ", "size": 1, "url": "/b"},
        {"name": "app", "version": "1", "sha256": SHA, "size": -1, "url": "/b"},
        {"name": "", "version": "1", "sha256": SHA, "size": 1, "url": "/b"},
        # Names and versions become path components on the device.
        {"name": "../../etc", "version": "1", "sha256": SHA, "size": 1, "url": "/b"},
        {"name": "app/x", "version": "1", "sha256": SHA, "size": 1, "url": "/b"},
        {"name": "app", "version": "../../../tmp/x", "sha256": SHA, "size": 1, "url": "/b"},
        {"name": "app", "version": "1/../../x", "sha256": SHA, "size": 1, "url": "/b"},
        {"name": "app", "version": "..", "sha256": SHA, "size": 1, "url": "/b"},
    ],
)
def test_bad_bundle_entries_are_format_errors(
    server_key: keys.PrivateKey, bundle: dict[str, object]
) -> None:
    payload = make_manifest().to_dict()
    payload["bundles"] = [bundle]
    from kernex_core.canonical import canonical_json
    from kernex_core.envelope import sign_envelope
    from kernex_core.manifest import MANIFEST_PAYLOAD_TYPE

    kid = keys.fingerprint(server_key.public_key())
    raw = sign_envelope(MANIFEST_PAYLOAD_TYPE, canonical_json(payload), {kid: server_key})
    assert _reason(raw.to_json(), verifier(server_key)) == "format"


def test_deeply_nested_json_is_a_format_error_not_a_crash(server_key: keys.PrivateKey) -> None:
    # Parsed before any signature check: anyone between device and server can send it.
    assert _reason(b"[" * 200_000, verifier(server_key)) == "format"
    assert _reason(b'{"a":' * 200_000, verifier(server_key)) == "format"
    # A signed payload nested too deep (a breached server key) is refused the same way.
    from kernex_core.envelope import sign_envelope
    from kernex_core.manifest import MANIFEST_PAYLOAD_TYPE

    kid = keys.fingerprint(server_key.public_key())
    raw = sign_envelope(MANIFEST_PAYLOAD_TYPE, b"[" * 200_000, {kid: server_key})
    assert _reason(raw.to_json(), verifier(server_key)) == "format"
