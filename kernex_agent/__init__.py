"""The Kernex device agent: converge to the signed manifest, verify every byte, install
atomically, health-check, roll back, report, and survive a power cut at any point.

It imports ``kernex_core`` and httpx only, so a device installs little. The loop's edges
(HTTP client, data directory, hook runner, clock, sleep) are injectable, so one event loop
can run many agents (the fleet simulator).
"""

from kernex_core import __version__

AGENT_VERSION = __version__

__all__ = ["AGENT_VERSION"]
