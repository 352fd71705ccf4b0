"""Device status reports, written with group commit: a 204 means the report is committed.

A report is one small write, and a commit makes every device report two to four times
within seconds. One transaction per report serialises them all on the database's write
lock (SQLite has one writer), so reports are queued here and a background loop writes
each batch in one transaction (``Store.record_statuses``). The request that brought a
report waits for its batch's commit (``submit``): it answers 204 only once the report is
in the database, and 503 when the batch could not be written, so the agent keeps the
report and sends it again. While one batch commits the next one gathers, so many devices
reporting at once share few commits.

Readers that need the newest status (admin views, ``deploy --wait``) call ``flush``
first: it returns once every report accepted before the call is committed, so reads see
exactly what the devices said, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque
from dataclasses import dataclass

import anyio

from kernex_core.protocol import StatusReport
from kernex_server.store import Store

log = logging.getLogger("kernex.server")

MAX_QUEUED = 100_000  # reports waiting for a commit; more are refused (503) until it ends


class StatusNotRecorded(Exception):
    """The report's batch could not be written (or the queue was full)."""


@dataclass(frozen=True)
class ReceivedReport:
    device_id: str
    report: StatusReport
    received_at: float  # Unix seconds
    waiter: asyncio.Future[None] | None = None  # the request waiting for the commit


def _settle(waiter: asyncio.Future[None], error: BaseException | None) -> None:
    if waiter.done():
        return
    if error is None:
        waiter.set_result(None)
    else:
        waiter.set_exception(StatusNotRecorded(str(error) or type(error).__name__))


class StatusRecorder:
    """The queue between the status endpoint (event loop) and the database (a thread)."""

    def __init__(self, store: Store, *, keep: int, max_queued: int = MAX_QUEUED) -> None:
        self.store = store
        self.keep = keep  # history rows kept per device
        self._queue: deque[ReceivedReport] = deque()
        self._max_queued = max_queued
        self._queue_lock = threading.Lock()  # accept (loop) vs take (flusher thread)
        self._write_lock = threading.Lock()  # one batch at a time, so batches stay in order
        self._arrived: anyio.Event | None = None  # the writer loop waits on it
        self.refused = 0  # reports answered 503 because the queue was full

    def accept(
        self, device_id: str, report: StatusReport, *, now: float
    ) -> asyncio.Future[None] | None:
        """Queue a report; inside the event loop, return a future settled by its commit."""
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        waiter = loop.create_future() if loop is not None else None
        with self._queue_lock:
            if len(self._queue) >= self._max_queued:
                self.refused += 1
                raise StatusNotRecorded(f"{self._max_queued} reports are waiting for a commit")
            self._queue.append(ReceivedReport(device_id, report, now, waiter))
        if loop is not None and self._arrived is not None:  # anyio events are loop-bound
            self._arrived.set()
        return waiter

    async def submit(self, device_id: str, report: StatusReport, *, now: float) -> None:
        """Queue a report and return once it is committed; ``StatusNotRecorded`` when its
        batch could not be written."""
        waiter = self.accept(device_id, report, now=now)
        if waiter is not None:  # always, in the event loop
            await waiter

    async def wait_for_reports(self) -> None:
        """Return when reports are queued (the writer loop's wake-up)."""
        while not self._queue:
            self._arrived = anyio.Event()
            await self._arrived.wait()

    def pending(self) -> int:
        return len(self._queue)

    def flush(self) -> int:
        """Write every queued report (blocking; call from a worker thread). Returns how
        many were written. On a database error every request of the batch is answered
        503 (its agent sends the report again) and the error is raised."""
        with self._write_lock:
            with self._queue_lock:
                batch = list(self._queue)
                self._queue.clear()
            if not batch:
                return 0
            error: BaseException | None = None
            try:
                self.store.record_statuses(
                    [(r.device_id, r.report, r.received_at) for r in batch], keep=self.keep
                )
            except BaseException as exc:
                error = exc
                raise
            finally:
                for r in batch:
                    if r.waiter is not None:
                        with contextlib.suppress(RuntimeError):  # its loop has closed
                            r.waiter.get_loop().call_soon_threadsafe(_settle, r.waiter, error)
            return len(batch)
