"""Release signatures: the second key of the Uptane-style split.

A release key, kept off the server, signs each bundle's name, version, sha256 and size
when it is built. The statement is canonical JSON signed DSSE-style (PAE over the payload
type and the statement), and the signatures travel in the bundle catalog and in every
manifest, so a breached server cannot make a device install bytes no release key signed.

A release-key set (``application/vnd.kernex.release-keys+json``) replaces the pinned set
only when a currently pinned release key signed it (``kernex_core.trust``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kernex_core import keys
from kernex_core.canonical import canonical_json
from kernex_core.envelope import Signature, pae
from kernex_core.errors import EnvelopeError, KeyFormatError, ReleaseSignatureError

RELEASE_PAYLOAD_TYPE = "application/vnd.kernex.release+json"
RELEASE_KEYS_PAYLOAD_TYPE = "application/vnd.kernex.release-keys+json"


def release_statement(name: str, version: str, sha256: str, size: int) -> bytes:
    return canonical_json({"name": name, "sha256": sha256, "size": size, "version": version})


def sign_release(
    key: keys.PrivateKey, name: str, version: str, sha256: str, size: int
) -> Signature:
    keyid = keys.fingerprint(key.public_key())
    message = pae(RELEASE_PAYLOAD_TYPE, release_statement(name, version, sha256, size))
    return Signature(keyid=keyid, sig=keys.sign(key, message))


def verify_release(
    signatures: tuple[Signature, ...] | list[Signature],
    trusted: Mapping[str, keys.PublicKey],
    *,
    name: str,
    version: str,
    sha256: str,
    size: int,
    threshold: int = 1,
) -> set[str]:
    """Return the trusted keyids that signed this exact bundle; raise if too few did."""
    message = pae(RELEASE_PAYLOAD_TYPE, release_statement(name, version, sha256, size))
    good = {
        s.keyid
        for s in signatures
        if s.keyid in trusted and keys.verify(trusted[s.keyid], s.sig, message)
    }
    if len(good) < threshold:
        raise ReleaseSignatureError(
            f"bundle {name}@{version} has {len(good)} valid release signature(s), "
            f"needs {threshold}",
            hint="Sign the bundle with a pinned release key (`kernex bundle build --sign-key`).",
        )
    return good


@dataclass(frozen=True)
class ReleaseKeySet:
    """A versioned set of release public keys (keyid -> key) with a threshold."""

    version: int
    keys: Mapping[str, keys.PublicKey]
    threshold: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "threshold": self.threshold,
            "keys": [
                {"keyid": kid, "public_key": keys.public_key_to_pem(k)}
                for kid, k in sorted(self.keys.items())
            ],
        }

    @classmethod
    def from_dict(cls, data: Any) -> ReleaseKeySet:
        if not isinstance(data, Mapping):
            raise EnvelopeError("release key set is not an object")
        version, threshold, entries = (
            data.get("version"),
            data.get("threshold", 1),
            data.get("keys"),
        )
        if not isinstance(version, int) or not isinstance(threshold, int) or threshold < 1:
            raise EnvelopeError("release key set needs integer 'version' and 'threshold' >= 1")
        if not isinstance(entries, list) or not entries:
            raise EnvelopeError("release key set has no keys")
        parsed: dict[str, keys.PublicKey] = {}
        for entry in entries:
            if not isinstance(entry, Mapping) or not isinstance(entry.get("public_key"), str):
                raise EnvelopeError("release key entry needs 'public_key'")
            try:
                key = keys.load_public_key_pem(entry["public_key"], source="release key")
            except KeyFormatError as exc:
                raise EnvelopeError(str(exc)) from exc
            kid = keys.fingerprint(key)
            if entry.get("keyid") not in (None, kid):
                raise EnvelopeError(f"release key entry keyid {entry.get('keyid')!r} != {kid}")
            parsed[kid] = key
        return cls(version=version, keys=parsed, threshold=threshold)
