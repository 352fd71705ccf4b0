"""Every answer the server gives in a test is checked against its own ``/openapi.json``.

``check_answers(client)`` hooks a Starlette ``TestClient`` (an httpx client): each answer
to a documented (method, path) must have a documented status, and a JSON body must match
that status's schema. Requests to paths the app does not serve are not checked.
"""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from starlette.testclient import TestClient

from kernex_core import __version__
from kernex_server import openapi

BASE = "urn:kernex:openapi"


class AnswerChecker:
    def __init__(self, document: dict[str, Any]) -> None:
        text = json.dumps(document).replace('"#/components/', f'"{BASE}#/components/')
        self.document = json.loads(text)
        resource = Resource.from_contents(self.document, default_specification=DRAFT202012)
        self.registry: Registry[Any] = Registry().with_resource(BASE, resource)
        templates = []
        for path in self.document["paths"]:
            pattern = re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(path))
            templates.append((path.count("{"), path, re.compile(f"^{pattern}$")))
        self.templates = sorted(templates)  # literal segments win over parameters
        self.checked = 0

    def operation(self, method: str, path: str) -> dict[str, Any] | None:
        for _, template, pattern in self.templates:
            ops = self.document["paths"][template]
            if pattern.match(path) and method.lower() in ops:
                found: dict[str, Any] = ops[method.lower()]
                return found
        return None

    def __call__(self, response: httpx.Response) -> None:
        request = response.request
        op = self.operation(request.method, request.url.path)
        if op is None:  # a path or method the app does not serve: the router's 404/405
            return
        where = f"{request.method} {request.url.path} -> {response.status_code}"
        documented = op["responses"].get(str(response.status_code))
        assert documented is not None, (
            f"{where}: status not in /openapi.json ({sorted(op['responses'])})"
        )
        content = documented.get("content") or {}
        if "application/json" not in content:
            return
        response.read()
        media = response.headers.get("content-type", "").split(";")[0]
        assert media == "application/json", f"{where}: answered {media}, not JSON"
        schema = content["application/json"]["schema"]
        validator = Draft202012Validator(schema, registry=self.registry)
        problems = [
            f"{'/'.join(map(str, e.absolute_path)) or '(body)'}: {e.message}"
            for e in validator.iter_errors(response.json())
        ]
        assert not problems, f"{where}: answer does not match /openapi.json: {problems[:5]}"
        self.checked += 1


def check_answers(client: TestClient) -> AnswerChecker:
    """Hook ``client`` (a TestClient of ``create_app``) to check every answer (once)."""
    for hook in client.event_hooks.get("response", []):
        if isinstance(hook, AnswerChecker):
            return hook
    checker = AnswerChecker(openapi.build(client.app.routes, __version__))  # type: ignore[attr-defined]
    client.event_hooks = {**client.event_hooks, "response": [checker]}
    return checker
