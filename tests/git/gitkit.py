"""Moved to tests/kit/; this name stays until nothing imports it."""

from kit.git import *  # noqa: F403
