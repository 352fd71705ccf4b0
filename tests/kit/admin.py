"""Admin API access for tests: the bearer header for an admin token."""

from __future__ import annotations


def admin(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
