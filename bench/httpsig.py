"""Device request signing: Kernex's strict RFC 9421 profile against the reference library.

Every device request (each manifest long poll, status report and bundle fetch) is
verified on the server and signed on the device. This measures, in one run, Kernex's
``httpsig.verify_request`` / ``sign_request`` against the ``http-message-signatures``
library doing the same work on the same request, and the bare Ed25519 operations both
are built on. Target: Kernex's verify costs at most 1.5x a bare Ed25519 verify, and less
than the library's.

    python bench/httpsig.py [--rounds N]
"""

from __future__ import annotations

import argparse
import datetime
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from http_message_signatures import (
    HTTPMessageSigner,
    HTTPMessageVerifier,
    HTTPSignatureKeyResolver,
    algorithms,
)
from http_message_signatures.structures import CaseInsensitiveDict

from kernex_core import httpsig, keys

PATH = "/v1/devices/dev-1/status"
BODY = b'{"phase":"healthy","serial":3,"bundles":{"app":"1.4.0"}}'
COMPONENTS = ("@method", "@path", "content-digest")


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


def per_call_us(fn: Callable[[], object], rounds: int) -> float:
    fn()
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(rounds):
            fn()
        best = min(best, (time.perf_counter() - start) / rounds)
    return best * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2000)
    args = parser.parse_args()
    key = keys.generate_ed25519()
    public = key.public_key()
    now = int(time.time())

    # Kernex
    signed = {
        k.lower(): v
        for k, v in httpsig.sign_request("POST", PATH, BODY, key, "dev-1", created=now).items()
    }

    def kx_verify() -> None:
        httpsig.verify_request(
            "POST", PATH, signed, BODY, lambda _kid: public, now=now, nonces=httpsig.NonceCache()
        )

    def kx_sign() -> None:
        httpsig.sign_request("POST", PATH, BODY, key, "dev-1", created=now)

    # The library, same components and parameters
    resolver = Resolver(key)
    signer = HTTPMessageSigner(signature_algorithm=algorithms.ED25519, key_resolver=resolver)
    verifier = HTTPMessageVerifier(signature_algorithm=algorithms.ED25519, key_resolver=resolver)

    def lib_message() -> Message:
        message = Message("POST", f"https://kernex.test{PATH}")
        signer.sign(
            message,
            key_id="dev-1",
            nonce="n",
            created=datetime.datetime.fromtimestamp(now, tz=datetime.UTC),
            label="sig1",
            covered_component_ids=COMPONENTS,
            body=BODY,
        )
        return message

    lib_signed = lib_message()

    def lib_verify() -> None:
        verifier.verify(lib_signed, require_components=COMPONENTS, body=BODY)

    sig = key.sign(b"x" * 200)
    rows = [
        ("bare Ed25519 verify", per_call_us(lambda: public.verify(sig, b"x" * 200), args.rounds)),
        ("Kernex verify_request", per_call_us(kx_verify, args.rounds)),
        ("library verify", per_call_us(lib_verify, args.rounds)),
        ("bare Ed25519 sign", per_call_us(lambda: key.sign(b"x" * 200), args.rounds)),
        ("Kernex sign_request", per_call_us(kx_sign, args.rounds)),
        ("library sign", per_call_us(lib_message, args.rounds)),
    ]
    bare_verify, bare_sign = rows[0][1], rows[3][1]
    print(f"{'operation':<24}{'us/call':>10}{'x bare':>9}")
    for name, us in rows:
        bare = bare_verify if "verify" in name else bare_sign
        print(f"{name:<24}{us:>10.1f}{us / bare:>8.2f}x")
    kx, lib = rows[1][1], rows[2][1]
    verdict = "meets" if kx <= 1.5 * bare_verify and kx < lib else "MISSES"
    print(
        f"Kernex verify = {kx / bare_verify:.2f}x bare Ed25519, {kx / lib:.2f}x the library "
        f"(target <= 1.5x bare and < library): {verdict}"
    )


if __name__ == "__main__":
    main()
