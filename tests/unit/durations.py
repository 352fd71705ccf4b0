"""Moved to tests/kit/; this name stays until nothing imports it."""

from kit.durations import *  # noqa: F403
