"""``GET /v1/server-info`` (public): the server's URL as it sees it, its version and its
manifest key, with a signed proof of that key over a client's ``?challenge=``
(``kernex_core.serverinfo``). Agents check it before they enroll; ``kernex server info``
prints it."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from kernex_core import __version__, serverinfo
from kernex_server import wire
from kernex_server.api import Param, operation, route
from kernex_server.auth import public_endpoint
from kernex_server.context import context_of
from kernex_server.http import ApiError, json_response


@operation(
    "GET",
    "The server's URL, version and manifest key; with ?challenge= a proof signed by it",
    ok=wire.ServerInfo,
    query=[Param("challenge", str, "16-128 random URL-safe characters to sign")],
    errors=(400,),
)
@public_endpoint
async def server_info(request: Request) -> Response:
    kx = context_of(request)
    challenge = request.query_params.get("challenge")
    if challenge is not None and not serverinfo.CHALLENGE_RE.match(challenge):
        raise ApiError(
            400,
            "challenge must be 16 to 128 characters of A-Z, a-z, 0-9, '-' and '_'",
            hint="Send a fresh random value, e.g. secrets.token_urlsafe(24).",
        )
    url = str(request.base_url).rstrip("/")
    answer = serverinfo.describe(
        kx.reconciler.issuer.key, url=url, version=__version__, challenge=challenge
    )
    response = json_response(answer)
    response.headers["Cache-Control"] = "no-store"
    return response


routes = [route(serverinfo.SERVER_INFO_PATH, server_info)]
