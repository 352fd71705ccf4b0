"""Moved to tests/kit/; this name stays until nothing imports it."""

from kit.agent import *  # noqa: F403
from kit.bundles import *  # noqa: F403
