"""Fetching the fleet repository in the background, so nothing that serves waits on Git.

A fetch runs in a thread of its own (one at a time per process): a remote that accepts
the connection and never answers holds only that thread, for at most ``git_timeout``
seconds (git's low-speed limit stops a stalled HTTP transfer sooner, SSH's
``ConnectTimeout`` an unreachable host). Start-up, ``/healthz``, enrollment and admin
requests never wait for it longer than they choose to (``fetch(wait=...)``); the
reconciler then reads whatever the local mirror holds.

The fetch's state (running since, last success, last error) is shown by ``/readyz``,
``/metrics`` (``kernex_git_fetch_*``) and ``GET /v1/admin/status`` (``kernex status``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TYPE_CHECKING, Any

import anyio
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from kernex_core.errors import KernexError
from kernex_git import redact_text
from kernex_server.http import wire_time

if TYPE_CHECKING:
    from kernex_server.context import ServerContext

log = logging.getLogger("kernex.server.git")

FETCH_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class Fetcher:
    """Runs ``sync`` (the source's fetch) in a background thread and remembers how it went."""

    def __init__(
        self,
        sync: Callable[[], None] | None,
        *,
        clock: Callable[[], float] = time.time,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.sync = sync
        self.clock = clock
        self.running_since: float | None = None
        self.last_success_at: float | None = None
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.last_duration: float | None = None
        self.failures = 0  # in a row, since the last success
        self._lock = threading.Lock()
        self._future: Future[None] | None = None
        registry = registry or CollectorRegistry()
        self._seconds = Histogram(
            "kernex_git_fetch_seconds",
            "Duration of fetches of the fleet repository.",
            buckets=FETCH_BUCKETS,
            registry=registry,
        )
        self._failed = Counter(
            "kernex_git_fetch_failures", "Fetches of the fleet repository that failed.",
            registry=registry,
        )  # fmt: skip
        Gauge(
            "kernex_git_fetch_last_success_timestamp_seconds",
            "When a fetch of the fleet repository last succeeded (0: never).",
            registry=registry,
        ).set_function(lambda: self.last_success_at or 0.0)
        Gauge(
            "kernex_git_fetch_running_seconds",
            "How long the fetch running now has run (0: none runs).",
            registry=registry,
        ).set_function(self.running_for)

    def running_for(self) -> float:
        since = self.running_since
        return max(0.0, self.clock() - since) if since is not None else 0.0

    def start(self) -> Future[None]:
        """The running fetch, or a new one started now."""
        with self._lock:
            if self._future is not None and not self._future.done():
                return self._future
            future: Future[None] = Future()
            self._future = future
            self.running_since = self.clock()
        thread = threading.Thread(
            target=self._run, args=(future,), name="kernex-git-fetch", daemon=True
        )
        thread.start()
        return future

    def _run(self, future: Future[None]) -> None:
        started = time.perf_counter()
        try:
            if self.sync is not None:
                self.sync()
        except BaseException as exc:  # handed to whoever waits, and recorded
            message = exc.message if isinstance(exc, KernexError) else str(exc)
            self.last_error = redact_text(message)
            self.last_error_at = self.clock()
            self.failures += 1
            self._failed.inc()
            self._finish(started)
            future.set_exception(exc)
        else:
            self.last_success_at = self.clock()
            self.last_error = None
            self.failures = 0
            self._finish(started)
            future.set_result(None)

    def _finish(self, started: float) -> None:
        self.last_duration = time.perf_counter() - started
        self._seconds.observe(self.last_duration)
        self.running_since = None

    async def fetch(self, wait: float | None = None) -> bool:
        """Start a fetch (or join the running one) and wait for it at most ``wait``
        seconds (``None``: until it ends). True when it ended (its error is raised),
        False when it still runs: it goes on in the background."""
        future = self.start()
        finished = await anyio.to_thread.run_sync(_wait_for, future, wait, abandon_on_cancel=True)
        if finished:
            future.result()  # raises the fetch's error
        return finished

    def state(self) -> dict[str, Any]:
        """What ``GET /v1/admin/status`` shows under ``git`` (times are epoch seconds)."""
        return {
            "running_since": self.running_since,
            "last_success_at": self.last_success_at,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "failures": self.failures,
            "last_duration": self.last_duration,
        }


def _wait_for(future: Future[None], wait: float | None) -> bool:
    try:
        future.exception(timeout=wait)
    except FutureTimeout:
        return False
    return True


def git_check(kx: ServerContext) -> str:
    """``ok``, or what is wrong with fetching the fleet repository: never fetched, a
    fetch running longer than ``poll_interval``, or no success for ``ready_poll_intervals``
    poll intervals (``/readyz``, ``GET /v1/admin/status``)."""
    if kx.reconciler.source is None:
        return "ok"
    fetcher = kx.fetcher
    running = fetcher.running_for() if fetcher is not None else 0.0
    stuck = f"a fetch has been running for {int(running)} s" if running else ""
    error = kx.last_reconcile_error or (fetcher.last_error if fetcher is not None else None)
    if kx.last_fetch_at is None:
        return "; ".join(p for p in (error or "not fetched yet", stuck) if p)
    age = kx.clock() - kx.last_fetch_at
    if running > kx.settings.poll_interval:
        return f"{stuck} (last success {int(age)} s ago)"
    if age > kx.settings.poll_interval * kx.settings.ready_poll_intervals:
        reason = f": {error}" if error else ""
        return f"not fetched for {int(age)} s{reason}"
    return "ok"


def git_status(kx: ServerContext) -> dict[str, Any]:
    """The ``git`` part of ``GET /v1/admin/status``: the fetch's state and its problem."""
    state = kx.fetcher.state() if kx.fetcher is not None else {}
    for key in ("running_since", "last_success_at", "last_error_at"):
        state[key] = wire_time(state.get(key))
    check = git_check(kx)
    return {**state, "problem": None if check == "ok" else check}
