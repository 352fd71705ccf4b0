"""Canonical JSON: the one byte encoding of every signed Kernex document.

Keys sorted, no insignificant white space, UTF-8, no NaN or infinities. Two equal
documents always encode to the same bytes, so a digest of the encoding names the content
(manifest ETags, config hashes, "did this device's desired state change").
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical_json(value: Any) -> bytes:
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def canonical_digest(value: Any) -> str:
    """Hex SHA-256 of the canonical encoding of ``value``."""
    return hashlib.sha256(canonical_json(value)).hexdigest()
