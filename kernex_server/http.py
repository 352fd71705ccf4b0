"""HTTP helpers shared by the route modules: bounded bodies, JSON answers, API errors."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from kernex_core.timefmt import format_time
from kernex_server.auth import error_body


class ApiError(Exception):
    """Raised inside handlers; answered as ``{"error": ..., "hint": ...}`` with ``status``."""

    def __init__(self, status: int, message: str, *, hint: str | None = None, **extra: Any):
        super().__init__(message)
        self.status = status
        self.message = message
        self.hint = hint
        self.extra = extra


def wire_time(value: float | None) -> str | None:
    """Unix seconds to the RFC 3339 UTC text of the API; None stays None."""
    return format_time(value) if value is not None else None


MAX_ROW_ID = 2**31 - 1  # integer primary keys are 32-bit on PostgreSQL


def path_id(request: Request, name: str, what: str) -> int:
    """A numeric path parameter (``{name:int}``) the database can hold; a larger one names
    no row, so it is a 404 rather than an overflow inside the database driver."""
    value: int = request.path_params[name]
    if value > MAX_ROW_ID:
        raise ApiError(404, f"no {what} {value}")
    return value


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) more than ``limit`` bytes without buffering them."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, "Content-Length is not a number")
        if int(declared) > limit:
            raise ApiError(413, f"request body over the {limit} byte limit")
    chunks = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise ApiError(413, f"request body over the {limit} byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"body is not JSON: {exc}") from exc
    except RecursionError as exc:  # parsed before any signature check: hostile input
        raise ApiError(400, "body is not JSON Kernex accepts: nested too deeply") from exc


def json_response(value: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(value, status_code=status)


def error_response(status: int, message: str, hint: str | None = None, **extra: Any) -> Response:
    return JSONResponse(error_body(message, hint, **extra), status_code=status)
