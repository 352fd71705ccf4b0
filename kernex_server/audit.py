"""The audit log: who did what to which target, from where, and how it ended.

Every mutating admin act, every admin request refused (401/403), device enrollments,
admissions and revocations, reconcile outcomes and webhook calls are written here. The
API only appends and reads; nothing updates or deletes an entry.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import anyio
from starlette.requests import Request

from kernex_core.formats import DURATION_RE, parse_duration
from kernex_core.timefmt import parse_time
from kernex_server.store import Store

log = logging.getLogger("kernex.server.audit")

OK = "ok"
DENIED = "denied"
ERROR = "error"


def client_address(request: Request) -> str:
    return request.client.host if request.client else ""


def parse_when(text: str, *, now: float) -> float:
    """An RFC 3339 time, or a duration back from now (``90s``, ``1h30m``, ``7d``)."""
    if DURATION_RE.match(text):
        return float(now - parse_duration(text))
    return float(parse_time(text))


class Auditor:
    def __init__(self, store: Store, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock

    def record(
        self,
        actor: str,
        action: str,
        target: str,
        *,
        result: str = OK,
        address: str = "",
        detail: Mapping[str, Any] | None = None,
    ) -> None:
        """Append one entry. A failure to write is logged, never raised: the act itself
        already happened (or was refused) and its answer must still go out."""
        try:
            self.store.audit(
                at=self.clock(),
                actor=actor,
                action=action,
                target=target,
                address=address,
                result=result,
                detail=detail,
            )
        except Exception:
            log.exception("cannot write audit entry %s %s %s", actor, action, target)

    async def request(
        self,
        request: Request,
        action: str,
        target: str,
        *,
        result: str = OK,
        actor: str | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> None:
        """Record an act made through ``request`` (actor: its token's name by default)."""
        if actor is None:
            identity = getattr(request.state, "identity", None)
            actor = identity.name if identity is not None else "anonymous"
        address = client_address(request)
        await anyio.to_thread.run_sync(
            lambda: self.record(
                actor, action, target, result=result, address=address, detail=detail
            )
        )
