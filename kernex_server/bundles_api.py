"""Bundle bytes under ``/v1/admin/bundles``: upload (content-addressed) and list.

An upload may say which catalog entry it is for (``?name=&version=``): when the deployed
fleet already pins that version to other bytes, the upload is refused with 409 unless
``?force=1``, so a published version is never rebound by mistake (``kernex bundle push``
sends both).
"""

from __future__ import annotations

import anyio
from starlette.requests import Request
from starlette.responses import Response

from kernex_core.formats import SHA256_RE
from kernex_core.timefmt import format_time
from kernex_server import wire
from kernex_server.api import BYTES, Answer, Param, operation, route
from kernex_server.audited import audited
from kernex_server.auth import Role, requires
from kernex_server.context import ServerContext, context_of
from kernex_server.errors import BundleStoreError
from kernex_server.http import ApiError, json_response

PREFIX = "/v1/admin/bundles"
TRUE = frozenset({"1", "true", "yes"})


def _time(value: float | None) -> str | None:
    return format_time(value) if value is not None else None


def check_not_rebound(kx: ServerContext, request: Request, sha256: str | None) -> None:
    """409 when the upload names a catalog version the deployed fleet pins to other bytes."""
    name = request.query_params.get("name")
    version = request.query_params.get("version")
    fleet = kx.reconciler.fleet
    if not name or not version or sha256 is None or fleet is None:
        return
    pinned = fleet.catalog.get(name, {}).get(version)
    if pinned is None or pinned.sha256 == sha256:
        return
    if request.query_params.get("force") in TRUE:
        request.state.audit_detail["rebinds"] = f"{name}@{version}"
        request.state.audit_detail["was"] = pinned.sha256
        return
    raise ApiError(
        409,
        f"{name} {version} is published with other bytes (sha256 {pinned.sha256[:16]}...)",
        hint="Give the new build a new version in kernex-bundle.yaml; to replace the "
        "published bytes anyway, push with --force.",
    )


async def _upload(request: Request, expected: str | None) -> Response:
    kx = context_of(request)
    if expected is not None and not SHA256_RE.match(expected):
        raise ApiError(400, "bundle address must be a lowercase sha256 hex digest")
    check_not_rebound(kx, request, expected)
    try:
        stored = await kx.blobs.put_stream(
            request.stream(), expected_sha256=expected, max_bytes=kx.settings.max_bundle_bytes
        )
    except BundleStoreError as exc:
        status = 413 if "limit" in exc.message else 400
        raise ApiError(status, exc.message, hint=exc.hint) from exc
    by = request.state.identity.name
    await anyio.to_thread.run_sync(
        lambda: kx.store.record_blob(stored.sha256, stored.size, now=kx.clock(), by=by)
    )
    request.state.audit_target = stored.sha256
    request.state.audit_detail.update(size=stored.size, created=stored.created)
    return json_response(
        {"sha256": stored.sha256, "size": stored.size, "created": stored.created},
        status=201 if stored.created else 200,
    )


REBIND_QUERY = [
    Param("name", str, "the catalog entry the bytes are for (with version)"),
    Param("version", str, "the catalog entry's version (with name)"),
    Param("force", bool, "rebind a version the deployed fleet pins to other bytes"),
]


@operation(
    "PUT",
    "Upload bundle bytes that must hash to {sha256}",
    ok=wire.StoredBundle,
    status=201,
    ok_text="stored",
    answers={200: Answer("already stored", wire.StoredBundle)},
    body=bytes,
    body_media=BYTES,
    query=REBIND_QUERY,
    errors=(400, 409, 413),
)
@requires(Role.OPERATOR)
@audited("bundle.upload")
async def put_bundle(request: Request) -> Response:
    return await _upload(request, request.path_params["sha256"])


@operation(
    "POST",
    "Upload bundle bytes",
    ok=wire.StoredBundle,
    status=201,
    ok_text="stored",
    answers={200: Answer("already stored", wire.StoredBundle)},
    body=bytes,
    body_media=BYTES,
    errors=(400, 413),
)
@requires(Role.OPERATOR)
@audited("bundle.upload")
async def post_bundle(request: Request) -> Response:
    return await _upload(request, None)


@operation("GET", "Stored bundles, newest first", ok=wire.BundleList)
@requires(Role.VIEWER)
async def list_bundles(request: Request) -> Response:
    kx = context_of(request)
    rows = await anyio.to_thread.run_sync(kx.store.list_blobs)
    return json_response({"bundles": [{**r, "uploaded_at": _time(r["uploaded_at"])} for r in rows]})


routes = [
    route(PREFIX, list_bundles, post_bundle),
    route(f"{PREFIX}/{{sha256}}", put_bundle),
]
