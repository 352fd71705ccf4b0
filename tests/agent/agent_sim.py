"""Moved to tests/kit/; this name stays until nothing imports it."""

from kit.simulator import *  # noqa: F403
