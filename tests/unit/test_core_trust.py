"""The device's trust rules (kernex_core.trust): the manifest verifier, the release-signature
rule and the rotation of manifest keys and release-key sets."""

from __future__ import annotations

import base64
import json

import pytest
from kit.manifests import NOW, SHA, make_manifest, pinned, verifier

from kernex_core import keys
from kernex_core.canonical import canonical_json
from kernex_core.envelope import Envelope, sign_envelope
from kernex_core.errors import EnvelopeError, ManifestRejectedError
from kernex_core.manifest import (
    MANIFEST_PAYLOAD_TYPE,
    MAX_MANIFEST_BYTES,
    BundleEntry,
    sign_manifest,
)
from kernex_core.release import RELEASE_KEYS_PAYLOAD_TYPE, ReleaseKeySet, sign_release
from kernex_core.trust import (
    ManifestVerifier,
    TrustAnchors,
    accept_manifest,
    accept_release_key_set,
)


@pytest.fixture
def server_key() -> keys.PrivateKey:
    return keys.generate_ed25519()


@pytest.fixture
def release_key() -> keys.PrivateKey:
    return keys.generate_ed25519()


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
    assert _reason(b" " * (MAX_MANIFEST_BYTES + 1), verifier(server_key)) == "size"
    assert _reason(b"{", verifier(server_key)) == "format"
    bad_payload = {
        "payload": base64.b64encode(b"[1,2]").decode(),
        "payloadType": "application/vnd.kernex.manifest+json",
        "signatures": [{"keyid": "x", "sig": "eA=="}],
    }
    assert _reason(json.dumps(bad_payload).encode(), verifier(server_key)) == "signature"


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
    kid = keys.fingerprint(server_key.public_key())
    raw = sign_envelope(MANIFEST_PAYLOAD_TYPE, canonical_json(payload), {kid: server_key})
    assert _reason(raw.to_json(), verifier(server_key)) == "format"


def test_deeply_nested_json_is_a_format_error_not_a_crash(server_key: keys.PrivateKey) -> None:
    # Parsed before any signature check: anyone between device and server can send it.
    assert _reason(b"[" * 200_000, verifier(server_key)) == "format"
    assert _reason(b'{"a":' * 200_000, verifier(server_key)) == "format"
    # A signed payload nested too deep (a breached server key) is refused the same way.
    kid = keys.fingerprint(server_key.public_key())
    raw = sign_envelope(MANIFEST_PAYLOAD_TYPE, b"[" * 200_000, {kid: server_key})
    assert _reason(raw.to_json(), verifier(server_key)) == "format"


def anchors(server_key: keys.PrivateKey, release: ReleaseKeySet | None = None) -> TrustAnchors:
    return TrustAnchors("dev-1", pinned(server_key), release, highest_serial=5)


def _refusal(raw: bytes, trusted: TrustAnchors) -> str:
    with pytest.raises(ManifestRejectedError) as info:
        accept_manifest(raw, trusted, NOW)
    return info.value.reason


def test_release_signatures_are_required_when_release_keys_are_pinned(
    server_key: keys.PrivateKey, release_key: keys.PrivateKey
) -> None:
    trusted = anchors(server_key, ReleaseKeySet(1, pinned(release_key)))
    unsigned = sign_manifest(make_manifest(), server_key).to_json()
    assert _refusal(unsigned, trusted) == "release"

    sig = sign_release(release_key, "app", "1.0.0", SHA, 1234)
    bundle = BundleEntry("app", "1.0.0", SHA, 1234, f"/v1/bundles/{SHA}", (sig,))
    signed = sign_manifest(make_manifest(bundles=(bundle,), serial=6), server_key).to_json()
    manifest, after = accept_manifest(signed, trusted, NOW)
    assert manifest.bundles == (bundle,)
    assert after.highest_serial == 6
    assert after.trust_mode == "manifest+release"

    # The server swaps in other bytes but keeps the release signature: refused.
    swapped = BundleEntry("app", "1.0.0", "e" * 64, 1234, "/v1/bundles/x", (sig,))
    raw = sign_manifest(make_manifest(bundles=(swapped,)), server_key).to_json()
    assert _refusal(raw, trusted) == "release"


def test_without_release_keys_the_manifest_key_is_enough(server_key: keys.PrivateKey) -> None:
    raw = sign_manifest(make_manifest(serial=7), server_key).to_json()
    manifest, after = accept_manifest(raw, anchors(server_key), NOW)
    assert manifest.serial == 7
    assert after.trust_mode == "manifest-only"
    assert TrustAnchors.from_dict("dev-1", after.to_dict()) == after


def test_manifest_key_rotation_is_announced_under_the_pinned_key(
    server_key: keys.PrivateKey,
) -> None:
    new = keys.generate_ed25519()
    ((kid, public),) = pinned(new).items()
    announced = ((kid, keys.public_key_to_pem(public)),)
    raw = sign_manifest(make_manifest(manifest_keys=announced), server_key).to_json()
    _, after = accept_manifest(raw, anchors(server_key), NOW)
    assert set(after.manifest_keys) == {kid}
    # an announcement whose keyid does not match its key is refused
    lying = (("SHA256:" + "A" * 43, announced[0][1]),)
    raw = sign_manifest(make_manifest(manifest_keys=lying), server_key).to_json()
    assert _refusal(raw, anchors(server_key)) == "format"


def _key_set_envelope(new: ReleaseKeySet, signer: keys.PrivateKey) -> Envelope:
    payload = json.dumps(new.to_dict()).encode()
    return sign_envelope(
        RELEASE_KEYS_PAYLOAD_TYPE, payload, {keys.fingerprint(signer.public_key()): signer}
    )


def test_release_key_rotation_needs_a_pinned_signature_and_a_newer_version() -> None:
    old, new, rogue = keys.generate_ed25519(), keys.generate_ed25519(), keys.generate_ed25519()
    current = ReleaseKeySet(1, {keys.fingerprint(old.public_key()): old.public_key()})
    proposed = ReleaseKeySet(2, {keys.fingerprint(new.public_key()): new.public_key()})

    accepted = accept_release_key_set(_key_set_envelope(proposed, old), current)
    assert set(accepted.keys) == {keys.fingerprint(new.public_key())}
    assert accepted.version == 2

    with pytest.raises(EnvelopeError):  # the server's word alone is not enough
        accept_release_key_set(_key_set_envelope(proposed, rogue), current)
    stale = ReleaseKeySet(1, proposed.keys)
    with pytest.raises(EnvelopeError, match="not newer"):
        accept_release_key_set(_key_set_envelope(stale, old), current)


def test_a_manifest_carries_the_release_key_rotation(
    server_key: keys.PrivateKey, release_key: keys.PrivateKey
) -> None:
    new_release = keys.generate_ed25519()
    proposed = ReleaseKeySet(2, pinned(new_release))
    sig = sign_release(new_release, "app", "1.0.0", SHA, 1234)
    bundle = BundleEntry("app", "1.0.0", SHA, 1234, f"/v1/bundles/{SHA}", (sig,))
    trusted = anchors(server_key, ReleaseKeySet(1, pinned(release_key)))
    rotating = make_manifest(
        bundles=(bundle,), release_keys=_key_set_envelope(proposed, release_key).to_dict()
    )
    _, after = accept_manifest(sign_manifest(rotating, server_key).to_json(), trusted, NOW)
    assert after.release_keys == proposed
    # The same set signed by a key the device never pinned changes nothing: the bundle
    # signed by the new key is then refused.
    forged = make_manifest(
        bundles=(bundle,),
        release_keys=_key_set_envelope(proposed, keys.generate_ed25519()).to_dict(),
    )
    assert _refusal(sign_manifest(forged, server_key).to_json(), trusted) == "release"
