"""Keys, fingerprints and raw signatures.

Manifest and release keys are Ed25519. Device keys may also be ECDSA P-256 or RSA of at
least 2048 bits, for hardware-backed keys. Signatures use the algorithm names of RFC 9421:
``ed25519``, ``ecdsa-p256-sha256`` (raw r||s, 64 bytes) and ``rsa-pss-sha512``.
A fingerprint is ``SHA256:`` and the unpadded base64 of the SHA-256 of the public key's
DER SubjectPublicKeyInfo, as OpenSSH prints them.
"""

from __future__ import annotations

import base64
import hashlib

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from kernex_core.errors import KeyFormatError

PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey

ED25519 = "ed25519"
ECDSA_P256 = "ecdsa-p256-sha256"
RSA_PSS = "rsa-pss-sha512"
MIN_RSA_BITS = 2048

_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA512()), salt_length=64)


def generate_ed25519() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def private_key_to_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_key_to_pem(key: PublicKey) -> str:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def load_private_key_pem(data: bytes, *, source: str = "key") -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFormatError(
            f"{source}: not an unencrypted PEM private key ({exc})",
            hint="Give a PKCS#8 PEM file such as the ones `kernex` writes.",
        ) from exc
    if not isinstance(
        key, (ed25519.Ed25519PrivateKey, ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)
    ):
        raise KeyFormatError(
            f"{source}: unsupported key type {type(key).__name__}",
            hint="Use Ed25519, ECDSA P-256 or RSA >= 2048.",
        )
    _check_public(key.public_key(), source)
    return key


def load_public_key_pem(data: str | bytes, *, source: str = "public key") -> PublicKey:
    raw = data.encode("ascii", "replace") if isinstance(data, str) else data
    try:
        key = serialization.load_pem_public_key(raw)
    except (ValueError, TypeError) as exc:
        raise KeyFormatError(
            f"{source}: not a PEM public key ({exc})",
            hint="Give a SubjectPublicKeyInfo PEM ('-----BEGIN PUBLIC KEY-----').",
        ) from exc
    if not isinstance(key, (ed25519.Ed25519PublicKey, ec.EllipticCurvePublicKey, rsa.RSAPublicKey)):
        raise KeyFormatError(
            f"{source}: unsupported key type {type(key).__name__}",
            hint="Use Ed25519, ECDSA P-256 or RSA >= 2048.",
        )
    _check_public(key, source)
    return key


def _check_public(key: PublicKey, source: str) -> None:
    if isinstance(key, ec.EllipticCurvePublicKey) and not isinstance(key.curve, ec.SECP256R1):
        raise KeyFormatError(
            f"{source}: ECDSA curve {key.curve.name} is not supported",
            hint="Use the P-256 (secp256r1) curve.",
        )
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        raise KeyFormatError(
            f"{source}: RSA key of {key.key_size} bits is too small",
            hint=f"Use RSA of at least {MIN_RSA_BITS} bits, or Ed25519.",
        )


def algorithm_of(key: PublicKey | PrivateKey) -> str:
    if isinstance(key, (ed25519.Ed25519PublicKey, ed25519.Ed25519PrivateKey)):
        return ED25519
    if isinstance(key, (ec.EllipticCurvePublicKey, ec.EllipticCurvePrivateKey)):
        return ECDSA_P256
    return RSA_PSS


def fingerprint(key: PublicKey) -> str:
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    digest = base64.b64encode(hashlib.sha256(der).digest()).decode("ascii").rstrip("=")
    return f"SHA256:{digest}"


def sign(key: PrivateKey, data: bytes) -> bytes:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(data)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")
    return key.sign(data, _PSS, hashes.SHA512())


def verify(key: PublicKey, signature: bytes, data: bytes) -> bool:
    """True when ``signature`` over ``data`` verifies under ``key``; never raises on bad input."""
    try:
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, data)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            if len(signature) != 64:
                return False
            der = encode_dss_signature(
                int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
            )
            key.verify(der, data, ec.ECDSA(hashes.SHA256()))
        else:
            key.verify(signature, data, _PSS, hashes.SHA512())
    except InvalidSignature:
        return False
    return True
