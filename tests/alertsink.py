"""Moved to tests/kit/; this name stays until nothing imports it."""

from kit.alertsink import *  # noqa: F403
