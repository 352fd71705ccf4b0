"""The RFC 9421 device request profile."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from kernex_core import httpsig, keys
from kernex_core.errors import RequestSignatureError

NOW = 1_800_000_000
PATH = "/v1/devices/dev-1/status"


@pytest.fixture
def device_key() -> keys.PrivateKey:
    return keys.generate_ed25519()


def signed(key: keys.PrivateKey, body: bytes = b'{"phase":"healthy"}', **kw: object) -> dict:
    args: dict = {"created": NOW, "nonce": None} | kw
    headers = httpsig.sign_request("POST", PATH, body, key, "dev-1", **args)
    return {k.lower(): v for k, v in headers.items()}


def verify(
    headers: dict,
    key: keys.PrivateKey,
    body: bytes = b'{"phase":"healthy"}',
    nonces: httpsig.NonceCache | None = None,
    now: float = NOW,
    method: str = "POST",
    path: str = PATH,
) -> httpsig.ParsedSignature:
    pub = key.public_key()
    return httpsig.verify_request(
        method,
        path,
        headers,
        body,
        lambda kid: pub if kid == "dev-1" else None,
        now=now,
        nonces=nonces if nonces is not None else httpsig.NonceCache(),
    )


def reason(**kw: object) -> str:
    with pytest.raises(RequestSignatureError) as info:
        verify(**kw)  # type: ignore[arg-type]
    return info.value.reason


def test_a_signed_request_verifies(device_key: keys.PrivateKey) -> None:
    parsed = verify(signed(device_key), device_key)
    assert parsed.keyid == "dev-1"
    assert parsed.created == NOW
    assert parsed.alg == "ed25519"


def test_p256_device_keys_sign_too() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    assert verify(signed(key), key).alg == "ecdsa-p256-sha256"


def test_headers_have_the_rfc9421_shape(device_key: keys.PrivateKey) -> None:
    h = signed(device_key, nonce="abc")
    assert h["signature-input"] == (
        'sig1=("@method" "@path" "content-digest");created=1800000000;nonce="abc";'
        'keyid="dev-1";alg="ed25519"'
    )
    assert h["signature"].startswith("sig1=:")
    assert h["signature"].endswith(":")
    assert h["content-digest"].startswith("sha-256=:")


def test_rejections(device_key: keys.PrivateKey) -> None:
    good = signed(device_key)
    assert reason(headers={}, key=device_key) == "missing"
    assert reason(headers=good, key=device_key, body=b"other") == "digest"
    assert reason(headers=good, key=device_key, now=NOW + 301) == "stale"
    assert reason(headers=good, key=device_key, now=NOW - 301) == "stale"
    assert reason(headers=good, key=device_key, path="/v1/devices/dev-2/status") == (
        "bad_signature"
    )
    assert reason(headers=good, key=device_key, method="GET") == "bad_signature"
    assert reason(headers=good, key=keys.generate_ed25519()) == "bad_signature"
    other_id = {
        k.lower(): v
        for k, v in httpsig.sign_request(
            "POST", PATH, b'{"phase":"healthy"}', device_key, "dev-9", created=NOW
        ).items()
    }
    assert reason(headers=other_id, key=device_key) == "unknown_key"


@pytest.mark.parametrize(
    "mangle",
    [
        lambda v: v.replace('"content-digest"', '"content-type"'),
        lambda v: v.replace(";created=", ";expires="),
        lambda v: v + ';nonce="again"',
        lambda v: v.replace("sig1=", "sig2="),
        lambda v: v.replace("created=1800000000", 'created="1800000000"'),
    ],
)
def test_malformed_signature_input_is_rejected(device_key: keys.PrivateKey, mangle) -> None:  # type: ignore[no-untyped-def]
    h = signed(device_key)
    h["signature-input"] = mangle(h["signature-input"])
    assert reason(headers=h, key=device_key) == "malformed"


def test_replay_is_rejected_but_only_after_the_signature_verifies(
    device_key: keys.PrivateKey,
) -> None:
    nonces = httpsig.NonceCache()
    h = signed(device_key, nonce="n-1")
    verify(h, device_key, nonces=nonces)
    assert reason(headers=h, key=device_key, nonces=nonces) == "replay"

    # A forger who reuses a nonce with a bad signature does not burn it for the device.
    fresh = signed(device_key, nonce="n-2")
    forged = dict(fresh, signature="sig1=:" + "A" * 88 + ":")
    assert reason(headers=forged, key=device_key, nonces=nonces) == "bad_signature"
    verify(fresh, device_key, nonces=nonces)


def test_nonce_cache_forgets_after_the_window_and_stays_bounded() -> None:
    cache = httpsig.NonceCache(window_seconds=10, max_entries=3)
    assert cache.check_and_remember("d", "a", now=0)
    assert not cache.check_and_remember("d", "a", now=5)
    assert cache.check_and_remember("d", "a", now=11)
    for i in range(10):
        cache.check_and_remember("d", f"n{i}", now=12)
    assert len(cache) == 3
