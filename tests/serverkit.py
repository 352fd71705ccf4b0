"""Moved to tests/kit/; this name stays until nothing imports it."""

from kit.admin import *  # noqa: F403
from kit.device import *  # noqa: F403
from kit.fleet import *  # noqa: F403
from kit.server import *  # noqa: F403
