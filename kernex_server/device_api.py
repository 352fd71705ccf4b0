"""The device protocol endpoints (see ``kernex_core.protocol`` and docs/protocol.md)."""

from __future__ import annotations

import re
from typing import Annotated

import anyio
from starlette.requests import Request
from starlette.responses import FileResponse, Response

from kernex_core import httpsig, keys
from kernex_core.errors import KeyFormatError, RequestSignatureError
from kernex_core.fleet.selector import LABEL_KEY_RE, LABEL_VALUE_RE
from kernex_core.formats import SHA256_RE
from kernex_core.protocol import (
    BUNDLE_PATH,
    DEVICE_ID_PATTERN,
    ENROLL_PATH,
    MANIFEST_PATH,
    MAX_WAIT_SECONDS,
    STATUS_PATH,
    EnrollmentState,
    EnrollRequest,
    EnrollResponse,
    StatusReport,
)
from kernex_server import wire
from kernex_server.api import BYTES, Answer, Param, operation, route
from kernex_server.audit import DENIED, OK, client_address
from kernex_server.auth import AuthError, device_endpoint, rate_limited, signed_path
from kernex_server.context import ServerContext, context_of
from kernex_server.errors import EnrollmentError
from kernex_server.http import ApiError, json_response, parse_json, read_body
from kernex_server.outage import DatabaseUnavailableError
from kernex_server.status import StatusNotRecorded

_DEVICE_ID_RE = re.compile(DEVICE_ID_PATTERN)
MAX_LABELS = 64
MAX_AGENT_VERSION = 64


def _enrollment_problem(enroll_request: EnrollRequest) -> str | None:
    """What is wrong with the labels or agent version (they feed selectors, tables, logs)."""
    labels = enroll_request.labels
    if len(labels) > MAX_LABELS:
        return f"{len(labels)} labels; at most {MAX_LABELS} are accepted"
    for key, value in labels.items():
        if not LABEL_KEY_RE.match(key):
            return f"label key {key!r} is not valid"
        if not LABEL_VALUE_RE.match(value):
            return f"label {key!r} has an invalid value {value!r}"
    version = enroll_request.agent_version
    if len(version) > MAX_AGENT_VERSION or not version.isprintable():
        return f"agent_version must be at most {MAX_AGENT_VERSION} printable characters"
    return None


@operation(
    "POST",
    "Enroll a device key (signed by that key)",
    ok=EnrollResponse,
    status=201,
    ok_text="enrolled",
    answers={200: Answer("already enrolled", EnrollResponse)},
    body=EnrollRequest,
    errors=(409,),
)
@device_endpoint
async def enroll(request: Request) -> Response:
    kx = context_of(request)
    address = client_address(request)
    wait = kx.enroller.limiter.take(address)
    if wait is not None:  # before the body is read, a row or an audit entry is written
        kx.metrics.device_rejected("rate_limited")
        raise rate_limited(f"address {address} (enrollments)", wait, "enroll_rate/enroll_burst")
    body = await read_body(request, kx.settings.max_body_bytes)
    try:
        enroll_request = EnrollRequest.from_dict(parse_json(body))
    except ValueError as exc:
        raise ApiError(400, f"invalid enrollment: {exc}") from exc
    device_id = enroll_request.device_id
    if not _DEVICE_ID_RE.match(device_id):
        raise ApiError(
            400,
            f"device id {device_id!r} is not valid",
            hint="Use 1-63 lower-case letters, digits, '.', '_' or '-', starting with a "
            "letter or digit.",
        )
    problem = _enrollment_problem(enroll_request)
    if problem is not None:
        raise ApiError(
            400,
            f"invalid enrollment: {problem}",
            hint="Labels follow the fleet repository's rules: keys like `ring` or "
            "`example.com/ring`, values of letters, digits, '-', '_' and '.' (at most 63).",
        )
    try:
        public_key = keys.load_public_key_pem(enroll_request.public_key, source="device key")
    except KeyFormatError as exc:
        raise ApiError(400, exc.message, hint=exc.hint) from exc
    # The request is signed by the key it enrolls: proof of possession.
    try:
        httpsig.verify_request(
            request.method,
            signed_path(request),
            request.headers,
            body,
            lambda kid: public_key if kid == device_id else None,
            now=kx.clock(),
            nonces=kx.device_auth.stranger_nonces,
            max_skew=kx.settings.max_skew,
        )
    except RequestSignatureError as exc:
        kx.metrics.device_rejected(exc.reason)
        raise AuthError(401, exc.message, hint=exc.hint) from exc
    signed = httpsig.parse_signature(request.headers)  # verified above
    await kx.device_auth.claim(signed.keyid, signed.nonce, kx.clock())
    fleet = kx.reconciler.fleet
    declared_entry = fleet.devices.get(device_id) if fleet is not None else None
    declared = declared_entry.key_fingerprint if declared_entry is not None else None
    actor = f"device:{device_id}"
    try:
        outcome = await anyio.to_thread.run_sync(
            lambda: kx.enroller.enroll(
                enroll_request, public_key, declared_fingerprint=declared, now=kx.clock()
            )
        )
    except EnrollmentError as exc:
        kx.metrics.device_rejected("forbidden" if exc.status == 403 else "conflict")
        await kx.auditor.request(
            request,
            "device.enroll",
            device_id,
            result=DENIED,
            actor=actor,
            detail={"status": exc.status, "error": exc.message},
        )
        raise
    if outcome.created or outcome.newly_accepted or outcome.changes:
        await kx.auditor.request(
            request,
            "device.enroll",
            device_id,
            result=OK,
            actor=actor,
            detail={
                "state": outcome.device.state,
                "admitted_by": outcome.device.admitted_by if outcome.newly_accepted else None,
                "fingerprint": outcome.device.fingerprint,
                **outcome.changes,
            },
        )
    kx.census.set_state(device_id, outcome.device.state)
    kx.device_auth.forget(device_id)
    if outcome.device.state == EnrollmentState.ACCEPTED.value:
        await kx.issue_for(device_id)
    response = EnrollResponse(
        device_id=device_id,
        state=EnrollmentState(outcome.device.state),
        manifest_public_key=keys.public_key_to_pem(kx.manifest_public_key),
        manifest_key_id=keys.fingerprint(kx.manifest_public_key),
    )
    return json_response(response.to_dict(), status=201 if outcome.created else 200)


def _matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
    return "*" in tags or etag in tags


def _wait_seconds(request: Request) -> float:
    raw = request.query_params.get("wait")
    if raw is None or raw == "":
        return 0.0
    if not raw.isdigit() or int(raw) > MAX_WAIT_SECONDS:
        raise ApiError(400, f"wait must be a whole number of seconds from 0 to {MAX_WAIT_SECONDS}")
    return float(raw)


async def _own_device(request: Request) -> tuple[ServerContext, str, bytes]:
    kx = context_of(request)
    body = await read_body(request, kx.settings.max_body_bytes)
    who = await kx.device_auth.authenticate(request, body)
    device_id = request.path_params["device_id"]
    if who.device_id != device_id:
        kx.metrics.device_rejected("forbidden")
        raise AuthError(403, f"device {who.device_id} may not act for device {device_id}")
    return kx, device_id, body


@operation(
    "GET",
    "The device's signed manifest; long poll with ?wait= and If-None-Match",
    ok=wire.Envelope,
    ok_text="DSSE envelope",
    answers={304: Answer("unchanged")},
    query=[Param("wait", Annotated[int, {"minimum": 0}], "seconds to wait for a change")],
    errors=(400, 404),
)
@device_endpoint
async def manifest(request: Request) -> Response:
    kx, device_id, _ = await _own_device(request)
    wait = _wait_seconds(request)
    if_none_match = request.headers.get("if-none-match")
    served = kx.cache.get(device_id)
    if wait > 0 and (served is None or _matches(if_none_match, served.etag)):
        kx.metrics.long_polls.inc()
        try:
            served = await kx.cache.wait_for_change(
                device_id, served.etag if served else "", timeout=wait
            )
        finally:
            kx.metrics.long_polls.dec()
    if served is None:
        raise ApiError(
            404,
            f"no manifest for device {device_id} yet",
            hint="The server has no deployed revision for this device; poll again.",
        )
    headers = {"ETag": served.etag, "Cache-Control": "no-cache"}
    if _matches(if_none_match, served.etag):
        return Response(status_code=304, headers=headers)
    return Response(served.envelope, media_type="application/json", headers=headers)


@operation(
    "POST",
    "Report the device's status",
    status=204,
    ok_text="recorded",
    body=StatusReport,
    errors=(422,),
)
@device_endpoint
async def status(request: Request) -> Response:
    kx, device_id, body = await _own_device(request)
    try:
        report = StatusReport.from_dict(parse_json(body))
    except ValueError as exc:
        raise ApiError(422, f"invalid status report: {exc}") from exc
    try:  # group commit: answer once the report's batch is in the database
        await kx.statuses.submit(device_id, report, now=kx.clock())
    except StatusNotRecorded as exc:  # the agent keeps the report and sends it again
        raise DatabaseUnavailableError(
            "the server's database is unavailable; the status report was not recorded"
        ) from exc
    kx.census.set_phase(device_id, report.phase.value)
    if report.serial is not None:
        await kx.serial_seen(device_id, report.serial)  # never serve below what it has
    await kx.rollout_report(device_id)  # staged rollouts watch their devices' reports
    return Response(status_code=204)


@operation(
    "GET",
    "Download bundle bytes (HTTP Range supported)",
    ok=bytes,
    ok_text="bytes",
    media=BYTES,
    answers={206: Answer("partial bytes", bytes, BYTES), 416: Answer("range not satisfiable")},
    errors=(400, 404),
)
@device_endpoint
async def bundle(request: Request) -> Response:
    kx = context_of(request)
    body = await read_body(request, kx.settings.max_body_bytes)
    await kx.device_auth.authenticate(request, body)
    sha256 = request.path_params["sha256"]
    if not SHA256_RE.match(sha256):
        raise ApiError(400, "bundle address must be a lowercase sha256 hex digest")
    path = kx.blobs.path_for(sha256)
    stat = await anyio.to_thread.run_sync(lambda: path.stat() if path.is_file() else None)
    if stat is None:
        raise ApiError(404, f"no bundle {sha256} in the store", hint="Upload it first.")
    return FileResponse(
        path,
        stat_result=stat,
        media_type="application/octet-stream",
        headers={"ETag": f'"{sha256}"', "Cache-Control": "private, max-age=31536000, immutable"},
    )


routes = [
    route(ENROLL_PATH, enroll),
    route(MANIFEST_PATH, manifest),
    route(STATUS_PATH, status),
    route(BUNDLE_PATH, bundle),
]
