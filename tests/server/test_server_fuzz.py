"""A schema-based fuzzer (schemathesis) against the app through its own /openapi.json.

Every operation gets a few generated requests, authenticated as an admin where the
operation wants a bearer token; every answer must be no server error and must match the
description: a documented status, content type and body schema.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

EXAMPLES = 10  # per operation: the whole run stays within seconds
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def _request(case: Any, auth: dict[str, str]) -> dict[str, Any]:
    """The case as httpx arguments (schemathesis builds requests-style ones)."""
    kwargs = case.as_transport_kwargs(base_url="http://testserver")
    out = {k: kwargs[k] for k in ("method", "url", "params") if kwargs.get(k)}
    headers = dict(kwargs.get("headers") or {})
    if kwargs.get("cookies"):  # as a header: per-request cookies are deprecated in httpx
        headers["cookie"] = "; ".join(f"{k}={v}" for k, v in kwargs["cookies"].items())
    if case.operation.definition.raw.get("security") == [{"bearer": []}]:
        headers.update(auth)
    out["headers"] = headers
    if "json" in kwargs:
        out["json"] = kwargs["json"]
    elif kwargs.get("data") is not None:
        data = kwargs["data"]
        out["content"] = data if isinstance(data, bytes) else str(data).encode()
    return out


def test_fuzzed_requests_get_no_server_error_and_answers_match_the_schema(
    start_server: Any,
) -> None:
    server = start_server(
        token_rate=10_000.0, token_burst=10_000, repo="", webhook_secret="fuzz-secret"
    )
    document = server.client.get("/openapi.json").json()
    schema = schemathesis.openapi.from_dict(document)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 35
    started = time.monotonic()
    answered: dict[int, int] = {}
    for operation in operations:

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(), _=st.just(None))
        def run(case: Any, _: None) -> None:
            # the operation's own answer: a 303 to the dashboard's login page is not followed
            response = server.client.request(**_request(case, server.auth), follow_redirects=False)
            answered[response.status_code] = answered.get(response.status_code, 0) + 1
            assert isinstance(response, httpx.Response)
            case.validate_response(response, checks=CHECKS)

        run()
    assert time.monotonic() - started < 60
    assert not any(status >= 500 for status in answered), answered
    assert answered.get(200, 0) > 20, answered  # authenticated reads got through
