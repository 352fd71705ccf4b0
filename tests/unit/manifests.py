"""Moved to tests/kit/; this name stays until nothing imports it."""

from kit.manifests import *  # noqa: F403
