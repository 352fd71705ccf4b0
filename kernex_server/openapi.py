"""placeholder"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from kernex_server.auth import public_endpoint
from kernex_server.http import json_response

PATH = "/openapi.json"


@public_endpoint
async def endpoint(request: Request) -> Response:
    return json_response({})
