"""Token-bucket rate limits, in memory, one bucket per key (an admin token, a device).

A bucket holds at most ``burst`` requests and refills at ``rate`` per second; a request
finding it empty is refused with the seconds until the next one fits (for Retry-After).
Each server process keeps its own buckets: behind several processes the limit is per
process, which is what protects each one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable


class RateLimiter:
    def __init__(
        self, rate: float, burst: int, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def take(self, key: str) -> int | None:
        """Spend one request of ``key``'s bucket: None if allowed, else seconds to wait."""
        if not self.enabled:
            return None
        now = self.clock()
        tokens, at = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return max(1, math.ceil((1.0 - tokens) / self.rate))
        self._buckets[key] = (tokens - 1.0, now)
        return None
