"""Fixtures shared by every test layer."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The PostgreSQL URL for database tests; skipped when unset, unless CI requires it."""
    url = os.environ.get("KERNEX_TEST_DATABASE_URL")
    if not url:
        if os.environ.get("KERNEX_REQUIRE_POSTGRES") == "1":
            pytest.fail("KERNEX_REQUIRE_POSTGRES=1 but KERNEX_TEST_DATABASE_URL is not set")
        pytest.skip("KERNEX_TEST_DATABASE_URL is not set")
    return url
