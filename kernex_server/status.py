"""Device status reports: accepted in memory at once, written to the database in batches.

A report is one small write, and a commit makes every device report two to four times
within seconds. One transaction per report serialises them all on the database's write
lock (SQLite has one writer), so reports are queued here and a background loop writes
each batch in one transaction (``Store.record_statuses``). A 204 means the report is
queued in this process: the lifespan flushes the queue on a clean shutdown, and a batch
that fails to write goes back to the queue for the next flush.

Readers that need the newest status (admin views, ``deploy --wait``) call ``flush``
first: it returns once every report accepted before the call is committed, so reads see
exactly what the devices said, in order.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass

from kernex_core.protocol import StatusReport
from kernex_server.store import Store

log = logging.getLogger("kernex.server")

MAX_QUEUED = 100_000  # reports held while the database is down; the oldest go first


@dataclass(frozen=True)
class ReceivedReport:
    device_id: str
    report: StatusReport
    received_at: float  # Unix seconds


class StatusRecorder:
    """The queue between the status endpoint (event loop) and the database (a thread)."""

    def __init__(self, store: Store, *, keep: int, max_queued: int = MAX_QUEUED) -> None:
        self.store = store
        self.keep = keep  # history rows kept per device
        self._queue: deque[ReceivedReport] = deque()
        self._max_queued = max_queued
        self._queue_lock = threading.Lock()  # accept (loop) vs take (flusher thread)
        self._write_lock = threading.Lock()  # one batch at a time, so batches stay in order
        self.dropped = 0  # reports lost because the queue overflowed

    def accept(self, device_id: str, report: StatusReport, *, now: float) -> None:
        with self._queue_lock:
            if len(self._queue) >= self._max_queued:
                self._queue.popleft()
                self.dropped += 1
            self._queue.append(ReceivedReport(device_id, report, now))

    def pending(self) -> int:
        return len(self._queue)

    def flush(self) -> int:
        """Write every queued report (blocking; call from a worker thread). Returns how
        many were written; on a database error the batch is queued again and the error
        raised."""
        with self._write_lock:
            with self._queue_lock:
                batch = list(self._queue)
                self._queue.clear()
            if not batch:
                return 0
            try:
                self.store.record_statuses(
                    [(r.device_id, r.report, r.received_at) for r in batch], keep=self.keep
                )
            except Exception:
                with self._queue_lock:  # newer reports arrived meanwhile: keep them last
                    self._queue.extendleft(reversed(batch))
                    while len(self._queue) > self._max_queued:
                        self._queue.popleft()
                        self.dropped += 1
                raise
            return len(batch)
