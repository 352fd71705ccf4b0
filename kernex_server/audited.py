"""``@audited(action)``: append an admin endpoint's outcome (ok or error) to the audit log
under the caller's token name."""

from __future__ import annotations

import functools
from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import Response

from kernex_core.errors import KernexError
from kernex_server.audit import ERROR, OK
from kernex_server.auth import Endpoint
from kernex_server.context import context_of
from kernex_server.http import ApiError


def audited(action: str) -> Callable[[Endpoint], Endpoint]:
    """Append the endpoint's outcome to the audit log. The target is
    ``request.state.audit_target`` when the handler sets it, else the first path
    parameter; ``request.state.audit_detail`` adds details (never secrets)."""

    def wrap(endpoint: Endpoint) -> Endpoint:
        @functools.wraps(endpoint)
        async def recorded(request: Request) -> Response:
            kx = context_of(request)
            request.state.audit_detail = {}
            try:
                response = await endpoint(request)
            except (ApiError, KernexError) as exc:
                status = getattr(exc, "status", 500)
                detail = {**request.state.audit_detail, "status": status, "error": exc.message}
                await kx.auditor.request(
                    request, action, _target(request), result=ERROR, detail=detail
                )
                raise
            detail = {**request.state.audit_detail, "status": response.status_code}
            await kx.auditor.request(request, action, _target(request), result=OK, detail=detail)
            return response

        return recorded

    return wrap


def _target(request: Request) -> str:
    given = getattr(request.state, "audit_target", None)
    if given:
        return str(given)
    return str(next(iter(request.path_params.values()), ""))
