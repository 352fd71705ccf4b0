"""One alert on the wire: its body, its signature, and when to try again.

Every delivery is a ``POST`` of a JSON body with these headers:

- ``Idempotency-Key``: the same for every attempt of one alert to one receiver; a
  receiver that has seen it already answers 2xx and does nothing.
- ``Kernex-Timestamp``: Unix seconds when this attempt was signed.
- ``Kernex-Signature``: ``sha256=<hex>``, HMAC-SHA256 under the receiver's secret of
  ``<timestamp>.<body>``; the receiver recomputes it (``verify`` below shows how) and
  refuses old timestamps, so a captured delivery cannot be replayed later.
- ``Kernex-Event``: the alert's kind.

The body is rendered from the stored alert, so every attempt sends the same bytes.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any

SIGNATURE_HEADER = "Kernex-Signature"
TIMESTAMP_HEADER = "Kernex-Timestamp"
KEY_HEADER = "Idempotency-Key"
EVENT_HEADER = "Kernex-Event"
MAX_SKEW = 300  # seconds a receiver should accept between Kernex-Timestamp and its clock


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The ``Kernex-Signature`` value of ``body`` sent at ``timestamp``."""
    signed = str(timestamp).encode() + b"." + body
    return "sha256=" + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def verify(
    secret: str, headers: Mapping[str, str], body: bytes, *, now: float, max_skew: int = MAX_SKEW
) -> bool:
    """What a receiver does: the timestamp is recent and the signature matches."""
    lower = {k.lower(): v for k, v in headers.items()}
    try:
        timestamp = int(lower[TIMESTAMP_HEADER.lower()])
        given = lower[SIGNATURE_HEADER.lower()]
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > max_skew:
        return False
    return hmac.compare_digest(given.encode(), signature(secret, timestamp, body).encode())


def render(fmt: str, key: str, alert: Mapping[str, Any]) -> bytes:
    """The body for a receiver of format ``fmt`` (``generic`` or ``slack``)."""
    if fmt == "slack":
        doc: dict[str, Any] = {"text": f":rotating_light: Kernex: {alert['summary']}"}
    else:
        doc = {"id": key, **alert}
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def headers(secret: str, key: str, kind: str, body: bytes, *, now: float) -> dict[str, str]:
    timestamp = int(now)
    return {
        "Content-Type": "application/json",
        KEY_HEADER: key,
        EVENT_HEADER: kind,
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: signature(secret, timestamp, body),
        "User-Agent": "kernex-alerts",
    }


def backoff(attempts: int, *, base: float, cap: float) -> float:
    """Seconds to wait after the ``attempts``-th failed attempt: base, 2*base, 4*base, ...,
    never more than ``cap``."""
    if attempts < 1:
        return 0.0
    return float(min(cap, base * 2 ** min(attempts - 1, 62)))
