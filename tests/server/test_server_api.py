"""The declaration of operations (kernex_server.api) and the schemas built from wire types."""

from __future__ import annotations

from typing import Annotated, Any, NotRequired, TypedDict

import pytest
from kit.apicheck import AnswerChecker
from starlette.requests import Request
from starlette.responses import Response
from starlette.testclient import TestClient

from kernex_core import keys
from kernex_core.protocol import StatusReport
from kernex_server.api import handlers, operation, route
from kernex_server.app import create_app
from kernex_server.auth import public_endpoint
from kernex_server.schema import Components


@public_endpoint
async def undeclared(request: Request) -> Response:
    return Response()


@operation("GET", "one")
@public_endpoint
async def first(request: Request) -> Response:
    return Response()


@operation("GET", "another")
@public_endpoint
async def second(request: Request) -> Response:
    return Response()


@operation("POST", "make")
@public_endpoint
async def make(request: Request) -> Response:
    return Response()


def test_a_route_needs_every_handler_to_declare_its_operation() -> None:
    with pytest.raises(TypeError, match="undeclared declares no @operation"):
        route("/x", undeclared)
    with pytest.raises(TypeError, match="two handlers for GET /x"):
        route("/x", first, second)


def test_one_route_serves_every_method_of_a_path() -> None:
    made = route("/x", first, make)
    assert made.methods == {"GET", "HEAD", "POST"}
    assert handlers(made) == {"GET": first, "POST": make}
    assert handlers(route("/y", first)) == {"GET": first}


class Answer(TypedDict):
    """An answer."""

    name: Annotated[str, {"minLength": 1}]
    size: int | None
    note: NotRequired[str]
    report: StatusReport | None


def test_schemas_are_built_from_typeddicts_and_dataclasses() -> None:
    components = Components()
    assert components.of(Answer) == {"$ref": "#/components/schemas/Answer"}
    answer = components.schemas["Answer"]
    assert answer["required"] == ["name", "size", "report"]
    assert answer["description"] == "An answer."
    assert answer["properties"]["name"] == {"type": "string", "minLength": 1}
    assert answer["properties"]["size"] == {"type": ["integer", "null"]}
    assert answer["properties"]["report"] == {
        "anyOf": [{"$ref": "#/components/schemas/StatusReport"}, {"type": "null"}]
    }
    report = components.schemas["StatusReport"]
    assert report["required"] == ["phase"]
    assert "healthy" in report["properties"]["phase"]["enum"]
    assert report["properties"]["bundles"] == {
        "type": "object",
        "additionalProperties": {"type": "string"},
    }


def test_every_test_client_of_the_app_checks_its_answers(
    make_settings: Any, manifest_key: keys.PrivateKey
) -> None:
    app = create_app(make_settings(), manifest_key=manifest_key, background=False)
    with TestClient(app) as client:
        (checker,) = [h for h in client.event_hooks["response"] if isinstance(h, AnswerChecker)]
        assert client.get("/healthz").status_code == 200
        assert client.get("/v1/admin/whoami").status_code == 401
        assert checker.checked == 2
