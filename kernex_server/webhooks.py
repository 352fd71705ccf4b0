"""``POST /v1/hooks/git``: the Git host says the fleet repository changed.

Two formats: GitHub signs the exact body bytes with HMAC-SHA256 under the shared secret
(``X-Hub-Signature-256: sha256=<hex>``); GitLab sends the secret itself
(``X-Gitlab-Token``). Both are compared in constant time. A valid push to the deployed
branch wakes the reconcile loop (fetch + reconcile at once) and answers 202 without
waiting for it; other events (GitHub's ``ping``) and other branches answer without
reconciling. Every call is audited; a bad signature is 401.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from kernex_server import wire
from kernex_server.api import Answer, operation, route
from kernex_server.audit import DENIED, OK
from kernex_server.auth import AuthError, webhook_endpoint
from kernex_server.context import context_of
from kernex_server.http import ApiError, read_body

PATH = "/v1/hooks/git"
MAX_PAYLOAD_BYTES = 5 * 1024 * 1024  # GitHub lists at most 20 commits in a push payload

GITHUB_PUSH_EVENTS = {"push"}
GITLAB_PUSH_EVENTS = {"Push Hook", "Tag Push Hook", "System Hook"}


def github_signature(secret: str, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` value GitHub sends for ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _sender(request: Request) -> str:
    if "x-hub-signature-256" in request.headers:
        return "github"
    if "x-gitlab-token" in request.headers:
        return "gitlab"
    return "unknown"


def _verified(request: Request, secret: str, body: bytes, sender: str) -> bool:
    if sender == "github":
        given = request.headers["x-hub-signature-256"].strip()
        return hmac.compare_digest(given.encode(), github_signature(secret, body).encode())
    if sender == "gitlab":
        return hmac.compare_digest(request.headers["x-gitlab-token"].encode(), secret.encode())
    return False


def _event(request: Request, sender: str) -> tuple[str, bool]:
    """The event name and whether it announces new commits."""
    if sender == "github":
        event = request.headers.get("x-github-event", "")
        return event, event in GITHUB_PUSH_EVENTS
    event = request.headers.get("x-gitlab-event", "")
    return event, event in GITLAB_PUSH_EVENTS


def _ref(body: bytes) -> str | None:
    try:
        payload: Any = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    ref = payload.get("ref") if isinstance(payload, dict) else None
    return ref if isinstance(ref, str) else None


@operation(
    "POST",
    "Git host webhook: GitHub (X-Hub-Signature-256) or GitLab (X-Gitlab-Token)",
    ok=wire.WebhookResult,
    status=202,
    ok_text="a reconcile is started",
    answers={200: Answer("ignored event or branch", wire.WebhookResult)},
    body=dict[str, Any],
    errors=(503,),
)
@webhook_endpoint
async def git_hook(request: Request) -> Response:
    kx = context_of(request)
    secret = kx.settings.webhook_secret
    sender = _sender(request)
    actor = f"webhook:{sender}"
    if not secret:
        await kx.auditor.request(
            request,
            "webhook",
            PATH,
            result=DENIED,
            actor=actor,
            detail={"error": "no webhook_secret configured"},
        )
        kx.metrics.webhooks.labels(result="not_configured").inc()
        raise ApiError(
            503,
            "webhooks are not configured on this server",
            hint="Set webhook_secret in server.toml (`kernex server init` makes one).",
        )
    body = await read_body(request, MAX_PAYLOAD_BYTES)
    delivery = request.headers.get("x-github-delivery") or request.headers.get(
        "x-gitlab-event-uuid"
    )
    if not _verified(request, secret, body, sender):
        await kx.auditor.request(
            request,
            "webhook",
            PATH,
            result=DENIED,
            actor=actor,
            detail={"error": "bad signature", "delivery": delivery},
        )
        kx.metrics.webhooks.labels(result="bad_signature").inc()
        raise AuthError(
            401,
            "webhook signature does not match",
            hint="Give the Git host the webhook_secret from server.toml: GitHub as the "
            "webhook secret (X-Hub-Signature-256), GitLab as the secret token.",
        )
    event, is_push = _event(request, sender)
    ref = _ref(body) if is_push else None
    wanted = f"refs/heads/{kx.settings.branch}"
    reconcile = is_push and (ref is None or ref == wanted)
    detail = {"event": event, "ref": ref, "delivery": delivery, "reconcile": reconcile}
    await kx.auditor.request(request, "webhook", ref or PATH, result=OK, actor=actor, detail=detail)
    kx.metrics.webhooks.labels(result="reconcile" if reconcile else "ignored").inc()
    if not reconcile:
        return JSONResponse({"reconcile": False, "event": event, "ref": ref}, status_code=200)
    background = None if kx.wake_reconciler() else BackgroundTask(kx.reconcile_once)
    return JSONResponse(
        {"reconcile": True, "event": event, "ref": ref}, status_code=202, background=background
    )


routes = [route(PATH, git_hook)]
