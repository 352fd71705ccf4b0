"""The Kernex device agent: converge to the signed manifest, verify every byte, install
atomically, health-check, roll back, report, and survive a power cut at any point.

It imports ``kernex_core`` and httpx only, so a device installs little. The loop's edges
(HTTP client, data directory, hook runner, clock, sleep) are injectable, so one event loop
can run many agents (the fleet simulator).
"""

import sys

from kernex_core import __version__

if "httpx" not in sys.modules:
    # httpx imports its own command line (rich, click, pygments) whenever those are
    # installed; the agent never uses it, so keep them out of a device's process.
    sys.modules["httpx._main"] = None  # type: ignore[assignment]
    try:
        import httpx  # noqa: F401
    finally:
        del sys.modules["httpx._main"]

AGENT_VERSION = __version__

__all__ = ["AGENT_VERSION"]
