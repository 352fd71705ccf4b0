"""Moved to tests/kit/; this name stays until nothing imports it."""

from kit.fleet import *  # noqa: F403
