"""Moved to tests/kit/; this name stays until nothing imports it."""

from kit.device import *  # noqa: F403
