"""RFC 3339 UTC timestamps on the wire, Unix seconds in memory."""

from __future__ import annotations

from datetime import UTC, datetime


def format_time(epoch: float) -> str:
    return datetime.fromtimestamp(int(epoch), tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> int:
    """Parse ``YYYY-MM-DDTHH:MM:SSZ`` (or any offset) to Unix seconds; ValueError if not."""
    if not isinstance(text, str):
        raise ValueError(f"timestamp must be a string, got {type(text).__name__}")
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        raise ValueError(f"timestamp {text!r} has no time zone")
    return int(value.timestamp())
