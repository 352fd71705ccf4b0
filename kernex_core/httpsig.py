"""Device request signing: one strict profile of RFC 9421 (HTTP Message Signatures).

Every device request carries::

    Content-Digest: sha-256=:<base64 of SHA-256 of the body>:          (RFC 9530)
    Signature-Input: sig1=("@method" "@path" "content-digest");created=<unix>;\
nonce="<random>";keyid="<device id>";alg="ed25519"
    Signature: sig1=:<base64 signature>:

The covered components are fixed, so the parser accepts exactly that list and the four
parameters (in any order, each once); the signature base is rebuilt from the received
``Signature-Input`` member as RFC 9421 section 2.5 says. The query string is not covered
(``?wait=`` only shortens a long poll). ``alg`` may be ``ed25519``, ``ecdsa-p256-sha256``
or ``rsa-pss-sha512`` and must match the device key.

Verification order: parse, digest, clock window, key, signature, and only then the nonce,
so an unauthenticated sender cannot fill the nonce cache or burn a device's nonces.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import secrets
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from kernex_core import keys
from kernex_core.errors import RequestSignatureError

COMPONENTS = '("@method" "@path" "content-digest")'
LABEL = "sig1"
MAX_SKEW_SECONDS = 300
_INPUT_RE = re.compile(
    r'^(?P<label>[a-z][a-z0-9_-]{0,15})=(?P<value>\("@method" "@path" "content-digest"\)'
    r'(?P<params>(?:;[a-z]+=(?:[0-9]{1,12}|"[\x20-\x21\x23-\x5b\x5d-\x7e]{1,256}"))+))$'
)
_PARAM_RE = re.compile(r';([a-z]+)=([0-9]+|"[^"]*")')
_SIG_RE = re.compile(r"^(?P<label>[a-z][a-z0-9_-]{0,15})=:(?P<sig>[A-Za-z0-9+/=]{1,1400}):$")
_DIGEST_RE = re.compile(r"(?:^|,\s*)sha-256=:(?P<b64>[A-Za-z0-9+/=]{44}):")


def content_digest(body: bytes) -> str:
    return "sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()).decode() + ":"


def new_nonce() -> str:
    return secrets.token_urlsafe(16)


def signature_base(method: str, path: str, digest: str, params_value: str) -> bytes:
    return (
        f'"@method": {method.upper()}\n'
        f'"@path": {path}\n'
        f'"content-digest": {digest}\n'
        f'"@signature-params": {params_value}'
    ).encode()


def sign_request(
    method: str,
    path: str,
    body: bytes,
    key: keys.PrivateKey,
    keyid: str,
    *,
    created: int,
    nonce: str | None = None,
) -> dict[str, str]:
    """Headers that sign this request with ``key`` under ``keyid``."""
    if '"' in keyid or "\\" in keyid:
        raise ValueError("keyid must not contain quotes or backslashes")
    digest = content_digest(body)
    value = (
        f'{COMPONENTS};created={int(created)};nonce="{nonce or new_nonce()}";'
        f'keyid="{keyid}";alg="{keys.algorithm_of(key)}"'
    )
    sig = keys.sign(key, signature_base(method, path, digest, value))
    return {
        "Content-Digest": digest,
        "Signature-Input": f"{LABEL}={value}",
        "Signature": f"{LABEL}=:{base64.b64encode(sig).decode()}:",
    }


@dataclass(frozen=True)
class ParsedSignature:
    label: str
    params_value: str
    created: int
    nonce: str
    keyid: str
    alg: str | None
    signature: bytes


def parse_signature(headers: Mapping[str, str]) -> ParsedSignature:
    sig_input = headers.get("signature-input")
    sig_header = headers.get("signature")
    if not sig_input or not sig_header:
        raise RequestSignatureError(
            "missing",
            "request is not signed (no Signature-Input/Signature headers)",
            hint="Device requests must be signed with the device key; use `kernex agent`.",
        )
    m = _INPUT_RE.match(sig_input.strip())
    s = _SIG_RE.match(sig_header.strip())
    if not m or not s or m.group("label") != s.group("label"):
        raise RequestSignatureError(
            "malformed", "Signature-Input or Signature does not follow the Kernex RFC 9421 profile"
        )
    params: dict[str, str] = {}
    for name, raw in _PARAM_RE.findall(m.group("params")):
        if name in params:
            raise RequestSignatureError("malformed", f"signature parameter {name!r} repeated")
        params[name] = raw
    if set(params) - {"created", "nonce", "keyid", "alg"} or not {
        "created",
        "nonce",
        "keyid",
    } <= set(params):
        raise RequestSignatureError(
            "malformed", "signature needs exactly created, nonce, keyid (and optional alg)"
        )
    if (
        not params["created"].isdigit()
        or any(not params[p].startswith('"') for p in ("nonce", "keyid"))
        or ("alg" in params and not params["alg"].startswith('"'))
    ):
        raise RequestSignatureError("malformed", "signature parameter has the wrong type")
    try:
        signature = base64.b64decode(s.group("sig"), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RequestSignatureError("malformed", "Signature is not valid base64") from exc
    return ParsedSignature(
        label=m.group("label"),
        params_value=m.group("value"),
        created=int(params["created"]),
        nonce=params["nonce"].strip('"'),
        keyid=params["keyid"].strip('"'),
        alg=params["alg"].strip('"') if "alg" in params else None,
        signature=signature,
    )


class NonceCache:
    """Nonces seen within the clock window, per key; bounded.

    A nonce still inside the window is never evicted to make room: that would let a
    captured request be replayed. When the cache is full, or one key holds
    ``max_per_key`` nonces, new requests are refused until entries expire, so a
    flooding key locks out itself (or, at worst, everyone) but never re-opens replay.
    """

    def __init__(
        self,
        window_seconds: int = 2 * MAX_SKEW_SECONDS,
        max_entries: int = 500_000,
        max_per_key: int | None = None,
    ):
        self.window = window_seconds
        self.max_entries = max_entries
        self.max_per_key = max_per_key
        self._seen: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._per_key: dict[str, int] = {}

    def check_and_remember(self, keyid: str, nonce: str, now: float) -> bool:
        """False when this nonce was seen for this key within the window, or when there
        is no room to remember it (see ``has_room``)."""
        self._expire(now)
        entry = (keyid, nonce)
        if entry in self._seen or not self.has_room(keyid, now):
            return False
        self._seen[entry] = now + self.window
        self._per_key[keyid] = self._per_key.get(keyid, 0) + 1
        return True

    def seen(self, keyid: str, nonce: str, now: float) -> bool:
        self._expire(now)
        return (keyid, nonce) in self._seen

    def has_room(self, keyid: str, now: float) -> bool:
        self._expire(now)
        if len(self._seen) >= self.max_entries:
            return False
        return self.max_per_key is None or self._per_key.get(keyid, 0) < self.max_per_key

    def _expire(self, now: float) -> None:
        while self._seen:
            (keyid, _), first = next(iter(self._seen.items()))
            if first > now:
                return
            self._seen.popitem(last=False)
            left = self._per_key.pop(keyid, 1) - 1
            if left > 0:
                self._per_key[keyid] = left

    def __len__(self) -> int:
        return len(self._seen)


def verify_request(
    method: str,
    path: str,
    headers: Mapping[str, str],
    body: bytes,
    key_for: Callable[[str], keys.PublicKey | None],
    *,
    now: float,
    nonces: NonceCache,
    max_skew: int = MAX_SKEW_SECONDS,
) -> ParsedSignature:
    """Verify a signed request; return the parsed signature (``keyid`` names the signer).

    ``headers`` must be case-insensitive or use lower-case names.
    """
    parsed = parse_signature(headers)
    digest_header = headers.get("content-digest")
    if not digest_header:
        raise RequestSignatureError("digest", "request has no Content-Digest header")
    m = _DIGEST_RE.search(digest_header)
    expected = content_digest(body)
    if not m or f"sha-256=:{m.group('b64')}:" != expected:
        raise RequestSignatureError("digest", "Content-Digest does not match the body")
    if abs(now - parsed.created) > max_skew:
        raise RequestSignatureError(
            "stale",
            f"signature created {int(now - parsed.created)} s from server time "
            f"(limit {max_skew} s)",
            hint="Check the device clock (NTP).",
        )
    key = key_for(parsed.keyid)
    if key is None:
        raise RequestSignatureError(
            "unknown_key",
            f"no key is enrolled as {parsed.keyid!r}",
            hint="Enroll the device first: `kernex agent enroll`.",
        )
    if parsed.alg is not None and parsed.alg != keys.algorithm_of(key):
        raise RequestSignatureError("bad_signature", f"alg {parsed.alg!r} does not match the key")
    base = signature_base(method, path, digest_header.strip(), parsed.params_value)
    if not keys.verify(key, parsed.signature, base):
        raise RequestSignatureError("bad_signature", "request signature does not verify")
    if nonces.seen(parsed.keyid, parsed.nonce, now):
        raise RequestSignatureError("replay", "request nonce was already used (replay)")
    if not nonces.check_and_remember(parsed.keyid, parsed.nonce, now):
        raise RequestSignatureError(
            "replay",
            f"too many requests signed by {parsed.keyid!r} within the replay window",
            hint="The server remembers every nonce for the replay window; retry in a few minutes.",
        )
    return parsed
