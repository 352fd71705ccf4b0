"""Each HTTP operation is declared beside its handler; ``/openapi.json`` is built from that.

A handler states its method, a summary, what it answers and what it takes::

    @operation("POST", "Create an admin token", ok=wire.NewToken, status=201,
               body=wire.TokenCreate, errors=(400, 409))
    @requires(Role.ADMIN)
    async def create_token(request: Request) -> Response: ...

    routes = [route("/v1/admin/tokens", list_tokens, create_token)]

``ok`` and ``body`` are wire types (a dataclass or TypedDict, see ``kernex_server.schema``)
or a schema written out; ``errors`` lists the statuses it answers with an ``Error`` body
beside those every operation of its authentication kind has (401, 403, 429: see
``kernex_server.openapi``); ``answers`` gives further answers (a 304, a second success
status). ``route`` makes one Starlette ``Route`` per path for all its handlers, so a
wrong method is answered 405 with an ``Allow`` header naming every method of the path.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from kernex_server.auth import Endpoint

ADMIN = "/v1/admin"  # the admin API's prefix
JSON = "application/json"
BYTES = "application/octet-stream"


@dataclass(frozen=True)
class Answer:
    """One documented answer: its description, body type (None: no body) and media type."""

    description: str
    body: Any = None
    media: str = JSON


@dataclass(frozen=True)
class Param:
    """A query parameter."""

    name: str
    type: Any
    description: str
    many: bool = False  # may repeat (?label=a=1&label=b=2)


@dataclass(frozen=True)
class Operation:
    method: str
    summary: str
    answers: Mapping[int, Answer]
    body: Any = None
    body_media: str = JSON
    query: tuple[Param, ...] = ()
    errors: tuple[int, ...] = ()
    body_required: bool = True


def operation(
    method: str,
    summary: str,
    *,
    ok: Any = None,
    status: int = 200,
    ok_text: str = "OK",
    media: str = JSON,
    answers: Mapping[int, Answer] | None = None,
    body: Any = None,
    body_media: str = JSON,
    body_required: bool = True,
    query: tuple[Param, ...] | list[Param] = (),
    errors: tuple[int, ...] = (),
) -> Callable[[Endpoint], Endpoint]:
    """Declare the operation ``endpoint`` serves (see the module text)."""
    declared = {status: Answer(ok_text, ok, media), **(answers or {})}
    op = Operation(
        method.upper(),
        summary,
        declared,
        body,
        body_media,
        tuple(query),
        tuple(errors),
        body_required,
    )

    def mark(endpoint: Endpoint) -> Endpoint:
        endpoint.operation = op  # type: ignore[attr-defined]
        return endpoint

    return mark


def operation_of(endpoint: Any) -> Operation | None:
    found = getattr(endpoint, "operation", None)
    return found if isinstance(found, Operation) else None


def route(path: str, *endpoints: Endpoint) -> Route:
    """One Route for ``path`` serving each endpoint's declared method."""
    by_method: dict[str, Endpoint] = {}
    for endpoint in endpoints:
        op = operation_of(endpoint)
        if op is None:
            raise TypeError(f"{endpoint.__name__} declares no @operation")
        if op.method in by_method:
            raise TypeError(f"two handlers for {op.method} {path}")
        by_method[op.method] = endpoint
    if len(by_method) == 1:
        ((method, endpoint),) = by_method.items()
        return Route(path, endpoint, methods=[method])

    async def dispatch(request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        return await by_method[method](request)

    dispatch.handlers = by_method  # type: ignore[attr-defined]
    name = "_".join(e.__name__ for e in by_method.values())
    return Route(path, dispatch, methods=list(by_method), name=name)


def handlers(route: Route) -> dict[str, Endpoint]:
    """Method -> handler of a route made by ``route`` (HEAD left out)."""
    found = getattr(route.endpoint, "handlers", None)
    if found is not None:
        return dict(found)
    return {m: route.endpoint for m in sorted(route.methods or ()) if m != "HEAD"}
