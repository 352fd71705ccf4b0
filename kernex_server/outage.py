"""Database outages: answered 503 with Retry-After, logged once when they start and once
when they end.

A request or background task that fails because the database cannot be reached reports
it here (``DatabaseHealth.failed``): the first failure logs one line, later ones only
count. While the database is down the server probes it every ``PROBE_SECONDS`` (and any
successful write also tells it), and logs one line when it answers again. Requests get
``DatabaseUnavailableError`` (503, ``Retry-After``, a hint that names the database), not
a traceback; what is cached in memory (device keys, manifests) keeps being served.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import anyio
import sqlalchemy as sa
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from kernex_server.database import check_connection
from kernex_server.errors import DatabaseError

if TYPE_CHECKING:
    from kernex_server.context import ServerContext

log = logging.getLogger("kernex.server")

RETRY_AFTER = 5  # seconds a client is asked to wait before it tries again
PROBE_SECONDS = 1.0  # while down, how often the database is tried


class DatabaseUnavailableError(DatabaseError):
    """The database cannot be reached: answered 503 with ``Retry-After``."""

    status = 503
    retry_after = RETRY_AFTER

    def __init__(self, message: str = "the server's database is unavailable") -> None:
        super().__init__(
            message,
            hint=f"The Kernex server cannot reach its database; nothing is wrong with your "
            f"token or request. Retry in {RETRY_AFTER} s; if it lasts, the operator should "
            "check the database server (KERNEX_DATABASE_URL) and the server log.",
        )


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` says the database cannot be reached (rather than a bug or bad data):
    a lost or refused connection, an exhausted pool, a locked or unopenable SQLite file."""
    if isinstance(exc, DatabaseUnavailableError):
        return True
    if isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.TimeoutError))


def first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class DatabaseHealth:
    """Whether the database answered last time; one log line per change."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.down_since: float | None = None
        self.failures = 0  # failed requests and tasks during the current outage
        self.outages = 0  # outages since the start

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def failed(self, exc: BaseException, where: str) -> None:
        self.failures += 1
        if self.down_since is None:
            self.down_since = self.clock()
            self.outages += 1
            log.error(
                "database unavailable (%s): %s; answering 503 until it is back",
                where,
                first_line(exc),
            )

    def ok(self) -> None:
        if self.down_since is None:
            return
        lasted = self.clock() - self.down_since
        log.warning(
            "database available again after %.1f s (%d failed requests and tasks meanwhile)",
            lasted,
            self.failures,
        )
        self.down_since = None
        self.failures = 0


def background_failed(health: DatabaseHealth, exc: BaseException, what: str) -> None:
    """A background task failed: an outage is counted (one log line per outage), anything
    else logged with its traceback."""
    if is_outage(exc):
        health.failed(exc, what)
    else:
        log.error("%s failed", what, exc_info=exc)


# -- the app's side: answers and the probe ------------------------------------------------


def unavailable(request: Request, exc: BaseException, answer: DatabaseUnavailableError) -> Response:
    """The 503 answer for a request that met an outage (counted, logged once)."""
    request.app.state.kx.database.failed(exc, f"{request.method} {request.url.path}")
    body = {"error": answer.message, "hint": answer.hint}
    return JSONResponse(body, status_code=answer.status, headers={"Retry-After": str(RETRY_AFTER)})


async def database_error(request: Request, exc: Exception) -> Response:
    """The app's handler of database exceptions: an outage is a 503 with Retry-After and
    one log line per outage; any other database error is a bug (500 and its traceback)."""
    if not is_outage(exc):
        raise exc
    return unavailable(request, exc, DatabaseUnavailableError())


async def probe_loop(kx: ServerContext) -> None:
    """While the database is down, try it every PROBE_SECONDS; log when it is back and
    reload the manifests (another server may have deployed meanwhile)."""
    while True:
        await anyio.sleep(PROBE_SECONDS)
        if not kx.database.down:
            continue
        try:
            await anyio.to_thread.run_sync(check_connection, kx.engine)
        except Exception as exc:  # still down: counted, not logged again
            kx.database.failed(exc, "probe")
            continue
        kx.database.ok()
        try:
            await kx.reload_cache()
        except Exception as exc:
            background_failed(kx.database, exc, "reloading manifests")
