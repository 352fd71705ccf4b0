"""Kernex's strict RFC 9421 profile against the http-message-signatures library.

The library signs with the profile's components and parameters and Kernex verifies;
Kernex signs and the library verifies. Ed25519, ECDSA P-256 and RSA-PSS.
"""

from __future__ import annotations

import datetime
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from http_message_signatures import (
    HTTPMessageSigner,
    HTTPMessageVerifier,
    HTTPSignatureKeyResolver,
    algorithms,
)
from http_message_signatures.exceptions import InvalidSignature
from http_message_signatures.structures import CaseInsensitiveDict

from kernex_core import httpsig, keys
from kernex_core.errors import RequestSignatureError

COMPONENTS = ("@method", "@path", "content-digest")
ALGORITHMS: dict[str, Any] = {
    keys.ED25519: algorithms.ED25519,
    keys.ECDSA_P256: algorithms.ECDSA_P256_SHA256,
    keys.RSA_PSS: algorithms.RSA_PSS_SHA512,
}


def make_key(alg: str) -> keys.PrivateKey:
    if alg == keys.ED25519:
        return ed25519.Ed25519PrivateKey.generate()
    if alg == keys.ECDSA_P256:
        return ec.generate_private_key(ec.SECP256R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@dataclass
class Message:
    method: str
    url: str
    headers: CaseInsensitiveDict = field(default_factory=CaseInsensitiveDict)


class Resolver(HTTPSignatureKeyResolver):
    def __init__(self, key: keys.PrivateKey) -> None:
        self.key = key

    def resolve_public_key(self, key_id: str) -> Any:
        return self.key.public_key()

    def resolve_private_key(self, key_id: str) -> Any:
        return self.key


@pytest.mark.parametrize("alg", sorted(ALGORITHMS))
def test_library_signs_kernex_verifies(alg: str) -> None:
    key = make_key(alg)
    body = b'{"phase":"healthy","serial":3}'
    message = Message("POST", "https://kernex.test/v1/devices/dev-1/status")
    now = int(time.time())
    signer = HTTPMessageSigner(signature_algorithm=ALGORITHMS[alg], key_resolver=Resolver(key))
    signer.sign(
        message,
        key_id="dev-1",
        created=datetime.datetime.fromtimestamp(now, tz=datetime.UTC),
        nonce="n-" + alg,
        label="sig1",
        covered_component_ids=COMPONENTS,
        body=body,
    )
    headers = {k.lower(): v for k, v in message.headers.items()}
    parsed = httpsig.verify_request(
        "POST",
        "/v1/devices/dev-1/status",
        headers,
        body,
        lambda kid: key.public_key() if kid == "dev-1" else None,
        now=now,
        nonces=httpsig.NonceCache(),
    )
    assert parsed.keyid == "dev-1"
    assert parsed.alg == alg
    with pytest.raises(RequestSignatureError):
        httpsig.verify_request(
            "POST",
            "/v1/devices/dev-1/status",
            headers,
            body + b" ",
            lambda kid: key.public_key(),
            now=now,
            nonces=httpsig.NonceCache(),
        )


@pytest.mark.parametrize("alg", sorted(ALGORITHMS))
def test_kernex_signs_library_verifies(alg: str) -> None:
    key = make_key(alg)
    body = b""
    path = "/v1/devices/dev-1/manifest"
    signed = httpsig.sign_request("GET", path, body, key, "dev-1", created=int(time.time()))
    message = Message("GET", f"https://kernex.test{path}?wait=30")
    for name, value in signed.items():
        message.headers[name] = value
    verifier = HTTPMessageVerifier(signature_algorithm=ALGORITHMS[alg], key_resolver=Resolver(key))
    results = verifier.verify(message, require_components=COMPONENTS, body=body)
    assert len(results) == 1
    assert results[0].parameters["keyid"] == "dev-1"
    assert results[0].parameters["alg"] == alg
    tampered = Message("GET", "https://kernex.test/v1/devices/dev-2/manifest")
    for name, value in signed.items():
        tampered.headers[name] = value
    with pytest.raises(InvalidSignature):
        verifier.verify(tampered, require_components=COMPONENTS, body=body)
