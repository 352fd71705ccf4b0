"""``/v1/admin/keys``: the manifest key and its rotation, the release-key set devices get.

- ``GET /v1/admin/keys`` (viewer): the manifest key, a rotation in progress (the new key,
  which devices have not moved yet), the release-key set manifests carry.
- ``POST /v1/admin/keys/manifest/rotate`` (admin): make a new manifest key; manifests,
  still signed by the current key, announce both; every manifest is re-issued.
- ``POST /v1/admin/keys/manifest/finish[?force=1]`` (admin): sign with the new key alone
  and delete the old one; refused (409) while an accepted device has not moved.
- ``PUT /v1/admin/keys/release`` (admin): a new release-key set (DSSE envelope) signed
  by the release keys of the set the server holds; every manifest is re-issued.

See ``kernex_server.keyring`` for the rules and docs/security.md for the procedure.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import Response

from kernex_core import keys
from kernex_core.timefmt import format_time
from kernex_server import wire
from kernex_server.api import Param, operation, route
from kernex_server.audited import audited
from kernex_server.auth import Role, requires
from kernex_server.context import ServerContext, context_of
from kernex_server.http import ApiError, json_response, parse_json, read_body
from kernex_server.keyring import Keyring, KeyRotationError, not_moved, reissue_all
from kernex_server.manifests import ServedManifest

PREFIX = "/v1/admin/keys"


def _keyring(kx: ServerContext) -> Keyring:
    if kx.keyring is None:  # create_app always sets it
        raise ApiError(503, "the keyring is not set up")
    return kx.keyring


def _describe(kx: ServerContext, keyring: Keyring) -> dict[str, Any]:
    pending: list[str] = []
    if keyring.started_at is not None:
        kx.statuses.flush()  # reports reach the database in batches
        with kx.store.sessions() as s:
            pending = not_moved(s, keyring.started_at)
    nxt = keyring.next
    return {
        "manifest_key_id": keys.fingerprint(keyring.signing.public_key()),
        "rotation": None
        if nxt is None
        else {
            "next_key_id": keys.fingerprint(nxt.public_key()),
            "started_at": format_time(keyring.started_at or 0),
            "devices_not_moved": pending,
        },
        "release_keys": keyring.release_summary(),
    }


async def _reissue(kx: ServerContext, change: Callable[[float], Any]) -> int:
    """Apply ``change`` to the keyring and re-issue every manifest, under the reconcile
    lock (so no pass signs with half a change); publish them to waiting devices."""
    reconciler = kx.reconciler

    def act(s: Session, now: float) -> list[ServedManifest]:
        change(now)
        return reissue_all(s, reconciler.issuer, now=now, ttl=reconciler.manifest_ttl())

    try:
        served = await anyio.to_thread.run_sync(lambda: reconciler.locked(act))
    except KeyRotationError as exc:
        raise ApiError(exc.status, exc.message, hint=exc.hint) from exc
    if served is None:
        raise ApiError(503, "another server holds the reconcile lock", hint="Try again.")
    kx.cache.publish(served)
    return len(served)


@operation(
    "GET",
    "The manifest key, a rotation in progress and the release-key set manifests carry",
    ok=wire.Keys,
)
@requires(Role.VIEWER)
async def show_keys(request: Request) -> Response:
    kx = context_of(request)
    keyring = _keyring(kx)
    return json_response(await anyio.to_thread.run_sync(lambda: _describe(kx, keyring)))


@operation(
    "POST",
    "Start a manifest-key rotation: a new key, announced in every manifest",
    ok=wire.Keys,
    status=201,
    errors=(409, 503),
)
@requires(Role.ADMIN)
@audited("keys.manifest.rotate")
async def rotate_manifest_key(request: Request) -> Response:
    kx = context_of(request)
    keyring = _keyring(kx)
    count = await _reissue(kx, keyring.begin)
    described = await anyio.to_thread.run_sync(lambda: _describe(kx, keyring))
    request.state.audit_target = described["rotation"]["next_key_id"]
    request.state.audit_detail = {"from": described["manifest_key_id"], "manifests": count}
    return json_response({**described, "manifests_reissued": count}, status=201)


@operation(
    "POST",
    "Sign with the new manifest key alone and delete the old one",
    ok=wire.Keys,
    query=[Param("force", bool, "finish although some devices have not moved")],
    errors=(409, 503),
)
@requires(Role.ADMIN)
@audited("keys.manifest.finish")
async def finish_manifest_key(request: Request) -> Response:
    kx = context_of(request)
    keyring = _keyring(kx)
    force = request.query_params.get("force") in {"1", "true", "yes"}
    described = await anyio.to_thread.run_sync(lambda: _describe(kx, keyring))
    rotation = described["rotation"]
    if rotation is None:
        raise ApiError(
            409,
            "no manifest-key rotation is in progress",
            hint="Start one: `kernex keys rotate-manifest-key`.",
        )
    waiting = rotation["devices_not_moved"]
    if waiting and not force:
        shown = ", ".join(waiting[:10]) + (
            f" and {len(waiting) - 10} more" if len(waiting) > 10 else ""
        )
        raise ApiError(
            409,
            f"{len(waiting)} accepted device(s) have not taken the new key yet: {shown}",
            hint="Wait until they report (`kernex keys show`), or pass --force: those "
            "devices then refuse every manifest until they are enrolled again.",
        )
    retired: list[str] = []
    count = await _reissue(
        kx, lambda _now: retired.append(keys.fingerprint(keyring.finish().public_key()))
    )
    kx.manifest_public_key = keyring.signing.public_key()  # server-info, enrollment
    request.state.audit_target = rotation["next_key_id"]
    request.state.audit_detail = {"retired": retired[0], "manifests": count, "force": force}
    described = await anyio.to_thread.run_sync(lambda: _describe(kx, keyring))
    return json_response({**described, "retired_key_id": retired[0], "manifests_reissued": count})


@operation(
    "PUT",
    "Hand devices a new release-key set signed by the current one",
    ok=wire.Keys,
    body=wire.Envelope,
    errors=(400, 503),
)
@requires(Role.ADMIN)
@audited("keys.release.rotate")
async def put_release_keys(request: Request) -> Response:
    kx = context_of(request)
    keyring = _keyring(kx)
    data = parse_json(await read_body(request, kx.settings.max_body_bytes))
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a DSSE envelope of a release-key set")
    count = await _reissue(kx, lambda _now: keyring.set_release(data))
    summary = keyring.release_summary() or {}
    request.state.audit_target = f"version {summary.get('version')}"
    request.state.audit_detail = {"keys": summary.get("keys"), "manifests": count}
    described = await anyio.to_thread.run_sync(lambda: _describe(kx, keyring))
    return json_response({**described, "manifests_reissued": count})


routes = [
    route(PREFIX, show_keys),
    route(f"{PREFIX}/manifest/rotate", rotate_manifest_key),
    route(f"{PREFIX}/manifest/finish", finish_manifest_key),
    route(f"{PREFIX}/release", put_release_keys),
]
