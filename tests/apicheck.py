"""Moved to tests/kit/; this name stays until nothing imports it."""

from kit.apicheck import *  # noqa: F403
