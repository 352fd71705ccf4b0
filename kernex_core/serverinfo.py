"""``GET /v1/server-info``: who a server is, checked before anything is sent to it.

The answer names the server's URL (as it sees it), its version and its manifest key. A
client that sends ``?challenge=<random>`` also gets a proof: a DSSE envelope (its own
payload type, so it can never pass for a manifest) over the challenge and the key id,
signed by that manifest key. So ``kernex agent enroll --server-key-fingerprint`` and
``kernex server info`` know the server *holds* the key they expect, not merely names it,
before an enrollment token or a device key is sent.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kernex_core import keys
from kernex_core.canonical import canonical_json
from kernex_core.envelope import Envelope, sign_envelope, verify_envelope
from kernex_core.errors import EnvelopeError, KernexError, KeyFormatError

SERVER_INFO_PATH = "/v1/server-info"
PAYLOAD_TYPE = "application/vnd.kernex.server-info+json"
CHALLENGE_RE = re.compile(r"^[A-Za-z0-9_-]{16,128}\Z")


class ServerInfoError(KernexError):
    """The server's answer does not prove what it should."""


def new_challenge() -> str:
    return secrets.token_urlsafe(24)


def describe(
    manifest_key: keys.PrivateKey, *, url: str, version: str, challenge: str | None
) -> dict[str, Any]:
    """The server's answer; ``challenge`` must match ``CHALLENGE_RE`` (checked by caller)."""
    public = manifest_key.public_key()
    key_id = keys.fingerprint(public)
    out: dict[str, Any] = {
        "url": url,
        "version": version,
        "manifest_key_id": key_id,
        "manifest_public_key": keys.public_key_to_pem(public),
    }
    if challenge is not None:
        payload = canonical_json({"challenge": challenge, "manifest_key_id": key_id})
        out["proof"] = sign_envelope(PAYLOAD_TYPE, payload, {key_id: manifest_key}).to_dict()
    return out


@dataclass(frozen=True)
class ServerInfo:
    url: str
    version: str
    manifest_key_id: str
    manifest_public_key: keys.PublicKey


def verify(answer: Any, *, challenge: str, expected_key_id: str | None = None) -> ServerInfo:
    """Check an answer to ``?challenge=``: the key matches its id (and ``expected_key_id``
    when given), and the proof is that key's signature over this challenge."""
    if not isinstance(answer, Mapping):
        raise ServerInfoError("the server-info answer is not a JSON object")
    try:
        public = keys.load_public_key_pem(
            str(answer.get("manifest_public_key") or ""), source="server manifest key"
        )
    except KeyFormatError as exc:
        raise ServerInfoError(f"the server's manifest key is not usable: {exc.message}") from exc
    key_id = keys.fingerprint(public)
    if answer.get("manifest_key_id") != key_id:
        raise ServerInfoError(
            f"the server's manifest key has fingerprint {key_id}, "
            f"but it announced {answer.get('manifest_key_id')}"
        )
    if expected_key_id is not None and key_id != expected_key_id:
        raise ServerInfoError(
            f"server's manifest key is {key_id}, not the expected {expected_key_id}",
            hint="You may be talking to another server; check the URL and the fingerprint "
            "(`kernex server info` on the right server prints it).",
        )
    try:
        envelope = Envelope.from_dict(answer.get("proof"))
        verify_envelope(envelope, {key_id: public}, payload_type=PAYLOAD_TYPE)
        proven = json.loads(envelope.payload)
    except (EnvelopeError, ValueError, TypeError) as exc:
        raise ServerInfoError(
            "the server did not prove it holds its manifest key",
            hint="Its answer to the challenge is missing or not signed by that key.",
        ) from exc
    if not isinstance(proven, dict) or proven.get("challenge") != challenge:
        raise ServerInfoError("the server's proof is for another challenge (a replay?)")
    return ServerInfo(
        url=str(answer.get("url") or ""),
        version=str(answer.get("version") or ""),
        manifest_key_id=key_id,
        manifest_public_key=public,
    )
