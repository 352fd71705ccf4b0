"""DSSE envelopes (Dead Simple Signing Envelope, secure-systems-lab/dsse v1).

An envelope carries a payload, its type and signatures over the pre-authentication
encoding ``PAE(type, payload)``, so a signature for one payload type can never be taken
for another. Kernex signs manifests, release statements and release-key sets this way.

    {"payload": b64(payload), "payloadType": "...", "signatures": [{"keyid": .., "sig": b64}]}
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kernex_core import keys
from kernex_core.errors import EnvelopeError

MAX_ENVELOPE_BYTES = 4 * 1024 * 1024


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding."""
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


@dataclass(frozen=True)
class Signature:
    keyid: str
    sig: bytes

    def to_dict(self) -> dict[str, str]:
        return {"keyid": self.keyid, "sig": base64.b64encode(self.sig).decode("ascii")}

    @classmethod
    def from_dict(cls, data: Any) -> Signature:
        if not isinstance(data, Mapping):
            raise EnvelopeError("signature entry is not an object")
        keyid, sig = data.get("keyid"), data.get("sig")
        if not isinstance(keyid, str) or not isinstance(sig, str):
            raise EnvelopeError("signature entry needs string 'keyid' and 'sig'")
        return cls(keyid=keyid, sig=_b64decode(sig, "sig"))


@dataclass(frozen=True)
class Envelope:
    payload_type: str
    payload: bytes
    signatures: tuple[Signature, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "payload": base64.b64encode(self.payload).decode("ascii"),
            "payloadType": self.payload_type,
            "signatures": [s.to_dict() for s in self.signatures],
        }

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def from_dict(cls, data: Any) -> Envelope:
        if not isinstance(data, Mapping):
            raise EnvelopeError("envelope is not a JSON object")
        payload, ptype, sigs = data.get("payload"), data.get("payloadType"), data.get("signatures")
        if not isinstance(payload, str) or not isinstance(ptype, str):
            raise EnvelopeError("envelope needs string 'payload' and 'payloadType'")
        if not isinstance(sigs, list) or not sigs:
            raise EnvelopeError("envelope has no signatures")
        return cls(
            payload_type=ptype,
            payload=_b64decode(payload, "payload"),
            signatures=tuple(Signature.from_dict(s) for s in sigs),
        )

    @classmethod
    def from_json(cls, raw: bytes, *, max_bytes: int = MAX_ENVELOPE_BYTES) -> Envelope:
        if len(raw) > max_bytes:
            raise EnvelopeError(f"envelope of {len(raw)} bytes exceeds the {max_bytes} limit")
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise EnvelopeError(f"envelope is not JSON: {exc}") from exc
        except RecursionError as exc:  # parsed before any signature check: hostile input
            raise EnvelopeError("envelope JSON is nested too deeply") from exc
        return cls.from_dict(data)


def sign_envelope(
    payload_type: str, payload: bytes, signers: Mapping[str, keys.PrivateKey]
) -> Envelope:
    """Sign ``payload`` with every key in ``signers`` (keyid -> private key)."""
    message = pae(payload_type, payload)
    return Envelope(
        payload_type=payload_type,
        payload=payload,
        signatures=tuple(Signature(kid, keys.sign(k, message)) for kid, k in signers.items()),
    )


def verify_envelope(
    envelope: Envelope,
    trusted: Mapping[str, keys.PublicKey],
    *,
    payload_type: str,
    threshold: int = 1,
) -> set[str]:
    """Check type and signatures; return the keyids whose signatures verified.

    Raises EnvelopeError unless at least ``threshold`` distinct trusted keys signed.
    """
    if envelope.payload_type != payload_type:
        raise EnvelopeError(f"payload type is {envelope.payload_type!r}, expected {payload_type!r}")
    message = pae(envelope.payload_type, envelope.payload)
    good = {
        s.keyid
        for s in envelope.signatures
        if s.keyid in trusted and keys.verify(trusted[s.keyid], s.sig, message)
    }
    if len(good) < threshold:
        raise EnvelopeError(
            f"envelope has {len(good)} valid signature(s) by trusted keys, needs {threshold}",
            hint="The signing key is not one this program trusts, or the content was altered.",
        )
    return good


def _b64decode(value: str, what: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise EnvelopeError(f"envelope field {what!r} is not valid base64") from exc
