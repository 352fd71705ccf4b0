"""Keys, DSSE envelopes and release signatures (release-key rotation: test_core_trust.py)."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from kernex_core import keys
from kernex_core.envelope import Envelope, pae, sign_envelope, verify_envelope
from kernex_core.errors import EnvelopeError, KeyFormatError, ReleaseSignatureError
from kernex_core.release import (
    sign_release,
    verify_release,
)

SHA = "a" * 64


def test_pae_matches_the_dsse_specification_example() -> None:
    # The DSSE v1 spec's test vector.
    assert pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )


@pytest.mark.parametrize(
    "make",
    [
        keys.generate_ed25519,
        lambda: ec.generate_private_key(ec.SECP256R1()),
        lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
    ],
    ids=["ed25519", "p256", "rsa2048"],
)
def test_sign_verify_round_trip_and_pem(make) -> None:  # type: ignore[no-untyped-def]
    key = make()
    sig = keys.sign(key, b"message")
    loaded = keys.load_public_key_pem(keys.public_key_to_pem(key.public_key()))
    assert keys.verify(loaded, sig, b"message")
    assert not keys.verify(loaded, sig, b"messagf")
    again = keys.load_private_key_pem(keys.private_key_to_pem(key))
    assert keys.fingerprint(again.public_key()) == keys.fingerprint(key.public_key())


def test_weak_keys_are_refused() -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - the weak key under test
    with pytest.raises(KeyFormatError, match="too small"):
        keys.load_public_key_pem(keys.public_key_to_pem(small.public_key()))
    other_curve = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(KeyFormatError, match="curve"):
        keys.load_public_key_pem(keys.public_key_to_pem(other_curve.public_key()))
    with pytest.raises(KeyFormatError, match="not a PEM public key"):
        keys.load_public_key_pem("-----BEGIN PUBLIC KEY-----\ngarbage\n")


def test_fingerprint_has_the_openssh_shape() -> None:
    fp = keys.fingerprint(keys.generate_ed25519().public_key())
    assert fp.startswith("SHA256:")
    assert len(fp) == len("SHA256:") + 43


def test_envelope_verifies_and_rejects_tampering() -> None:
    key = keys.generate_ed25519()
    kid = keys.fingerprint(key.public_key())
    env = sign_envelope("application/x-test", b'{"a":1}', {kid: key})
    parsed = Envelope.from_json(env.to_json())
    assert verify_envelope(parsed, {kid: key.public_key()}, payload_type="application/x-test") == {
        kid
    }

    tampered = Envelope(parsed.payload_type, b'{"a":2}', parsed.signatures)
    with pytest.raises(EnvelopeError, match="0 valid signature"):
        verify_envelope(tampered, {kid: key.public_key()}, payload_type="application/x-test")
    with pytest.raises(EnvelopeError, match="payload type"):
        verify_envelope(parsed, {kid: key.public_key()}, payload_type="application/x-other")
    stranger = keys.generate_ed25519()
    with pytest.raises(EnvelopeError):
        verify_envelope(parsed, {kid: stranger.public_key()}, payload_type="application/x-test")


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[]",
        b'{"payload": 1}',
        b'{"payload":"eA==","payloadType":"t","signatures":[]}',
        b'{"payload":"!!!","payloadType":"t","signatures":[{"keyid":"k","sig":"eA=="}]}',
    ],
)
def test_malformed_envelopes_raise_envelope_error(raw: bytes) -> None:
    with pytest.raises(EnvelopeError):
        Envelope.from_json(raw)


def test_oversized_envelope_is_refused_before_parsing() -> None:
    with pytest.raises(EnvelopeError, match="exceeds"):
        Envelope.from_json(b" " * 100, max_bytes=10)


def test_release_signature_binds_name_version_digest_and_size() -> None:
    key = keys.generate_ed25519()
    kid = keys.fingerprint(key.public_key())
    sig = sign_release(key, "app", "1.0.0", SHA, 10)
    trusted = {kid: key.public_key()}
    assert verify_release([sig], trusted, name="app", version="1.0.0", sha256=SHA, size=10) == {kid}
    for changed in (
        {"name": "evil"},
        {"version": "1.0.1"},
        {"sha256": "b" * 64},
        {"size": 11},
    ):
        args = {"name": "app", "version": "1.0.0", "sha256": SHA, "size": 10} | changed
        with pytest.raises(ReleaseSignatureError):
            verify_release([sig], trusted, **args)  # type: ignore[arg-type]
