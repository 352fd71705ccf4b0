"""Who is calling: devices (RFC 9421 signatures) and admins (bearer tokens with roles).

Device requests are verified with ``kernex_core.httpsig`` against the enrolled key;
keys and enrollment states are cached in memory (dropped on a state change, and
re-read after ``KEY_CACHE_SECONDS`` so several server processes converge), so the hot
path does not touch the database; while the database is down the cached keys keep
serving. Heartbeats (``last_seen``) are collected in memory and
written in batches.

Admin routes declare the least role they need with ``@requires(Role.OPERATOR)``; the
role order is viewer < operator < admin. Every other route declares its own kind of
authentication: ``@device_endpoint`` (RFC 9421 signatures), ``@webhook_endpoint`` (a
shared-secret HMAC or token) or ``@public_endpoint``. A test walks every route of the app
and checks each declares one (``auth_kind``).

Refused admin requests (401/403) are audited. Authenticated callers spend from a token
bucket per admin token and per device; an empty bucket answers 429 with Retry-After.
Unauthenticated admin requests (401) spend from a bucket per client address before their
audit row is written, so a stranger cannot grow the audit log without bound.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from enum import IntEnum
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import Response

from kernex_core import httpsig, keys
from kernex_core.errors import KeyFormatError, RequestSignatureError
from kernex_core.protocol import EnrollmentState
from kernex_server.audit import client_address
from kernex_server.nonces import SharedNonces
from kernex_server.outage import is_outage
from kernex_server.ratelimit import RateLimiter
from kernex_server.store import Store
from kernex_server.tokens import TokenIdentity

KEY_CACHE_SECONDS = 60.0
KEY_RETRY_SECONDS = 5.0  # while the database is down, a cached key is re-read this often
# Nonces per key within the replay window (2 x max_skew): admitted devices poll a few
# times a minute; a key over its share is refused until its nonces expire.
DEVICE_NONCES_PER_KEY = 10_000
# Enrollments and unadmitted devices: any network client can make such keys, so their
# nonces live apart, where a flood can hold up enrollment but not reopen replays.
STRANGER_NONCES = 100_000
STRANGER_NONCES_PER_KEY = 600  # a pending agent re-enrolls every 10 s

Endpoint = Callable[[Request], Awaitable[Response]]


class Role(IntEnum):
    VIEWER = 1
    OPERATOR = 2
    ADMIN = 3

    @classmethod
    def parse(cls, name: str) -> Role:
        return cls[name.upper()]


class AuthError(Exception):
    """Raised inside handlers; turned into a 401/403 JSON answer."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        hint: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.hint = hint
        self.retry_after = retry_after


def rate_limited(who: str, retry_after: int, settings: str = "token_rate/device_rate") -> AuthError:
    return AuthError(
        429,
        f"too many requests from {who}",
        hint=f"Retry in {retry_after} s; the limits are {settings} in server.toml.",
        retry_after=retry_after,
    )


def requires(role: Role) -> Callable[[Endpoint], Endpoint]:
    """Guard an admin endpoint: a bearer token of at least ``role``."""

    def wrap(endpoint: Endpoint) -> Endpoint:
        @functools.wraps(endpoint)
        async def guarded(request: Request) -> Response:
            kx = request.app.state.kx
            actor = "anonymous"
            try:
                identity = await kx.admin_auth.authenticate(request)
                actor = identity.name
                if Role.parse(identity.role) < role:
                    raise AuthError(
                        403,
                        f"token {identity.name!r} has role {identity.role}, this needs "
                        f"{role.name.lower()}",
                        hint="Ask an admin for a token with that role (`kernex tokens create`).",
                    )
            except AuthError as exc:
                if exc.status == 401:  # a stranger: spend from its address's bucket first
                    address = client_address(request)
                    wait = kx.admin_auth.failures.take(address)
                    if wait is not None:  # refused without the audit row a 401 would write
                        raise rate_limited(
                            f"address {address} (failed authentications)",
                            wait,
                            "auth_failure_rate/auth_failure_burst",
                        ) from exc
                await kx.auditor.request(
                    request,
                    "auth",
                    request.url.path,
                    result="denied",
                    actor=actor,
                    detail={"status": exc.status, "method": request.method, "error": exc.message},
                )
                raise
            retry = kx.admin_auth.limiter.take(f"token:{identity.id}")
            if retry is not None:
                raise rate_limited(f"token {identity.name!r}", retry)
            request.state.identity = identity
            return await endpoint(request)

        guarded.required_role = role  # type: ignore[attr-defined]
        return guarded

    return wrap


def device_endpoint(endpoint: Endpoint) -> Endpoint:
    """Mark an endpoint as device-authenticated (it calls ``DeviceAuth`` itself)."""
    endpoint.device_auth = True  # type: ignore[attr-defined]
    return endpoint


def public_endpoint(endpoint: Endpoint) -> Endpoint:
    endpoint.public = True  # type: ignore[attr-defined]
    return endpoint


def webhook_endpoint(endpoint: Endpoint) -> Endpoint:
    """Mark an endpoint as authenticated by the webhook secret (it checks it itself)."""
    endpoint.webhook_auth = True  # type: ignore[attr-defined]
    return endpoint


def auth_kind(endpoint: Any) -> str | None:
    """How a route's caller is authenticated: ``role:<name>``, ``session:<name>`` (a
    dashboard user, kernex_server.ui), ``device``, ``webhook``, ``public``; None when
    the endpoint declares nothing (a bug the route walk catches)."""
    role = getattr(endpoint, "required_role", None)
    if isinstance(role, Role):
        return f"role:{role.name.lower()}"
    ui_role = getattr(endpoint, "ui_role", None)
    if isinstance(ui_role, Role):
        return f"session:{ui_role.name.lower()}"
    if getattr(endpoint, "device_auth", False):
        return "device"
    if getattr(endpoint, "webhook_auth", False):
        return "webhook"
    if getattr(endpoint, "public", False):
        return "public"
    return None


class AdminAuth:
    def __init__(
        self,
        store: Store,
        clock: Callable[[], float] = time.time,
        *,
        limiter: RateLimiter | None = None,
        failures: RateLimiter | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.limiter = limiter or RateLimiter(0, 1)  # per token
        self.failures = failures or RateLimiter(0, 1)  # 401s per client address

    async def authenticate(self, request: Request) -> TokenIdentity:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError(
                401,
                "admin API needs `Authorization: Bearer <token>`",
                hint="Use the admin token printed by `kernex server init`.",
            )
        identity = await anyio.to_thread.run_sync(
            lambda: self.store.authenticate_token(token.strip(), now=self.clock())
        )
        if identity is None:
            raise AuthError(401, "token is unknown, expired or revoked")
        return identity


@dataclass(frozen=True)
class DeviceKey:
    device_id: str
    key: keys.PublicKey
    state: str
    loaded_at: float


@dataclass(frozen=True)
class AuthenticatedDevice:
    device_id: str
    state: str


def signed_path(request: Request) -> str:
    """The ``@path`` a device signed: the request target's path as sent, percent-encoding
    untouched (RFC 9421 section 2.2.6), with the root path a proxy stripped (uvicorn's
    ``--root-path``, ``kernex server run --root-path``) in front."""
    raw = request.scope.get("raw_path")
    if not raw:
        return request.url.path
    return bytes(raw).decode("latin-1")


class DeviceAuth:
    def __init__(
        self,
        store: Store,
        *,
        max_skew: int,
        clock: Callable[[], float] = time.time,
        limiter: RateLimiter | None = None,
        on_reject: Callable[[str], None] = lambda reason: None,
    ) -> None:
        self.store = store
        self.max_skew = max_skew
        self.clock = clock
        self.limiter = limiter or RateLimiter(0, 1)
        self.on_reject = on_reject  # reason -> None, for metrics
        self.nonces = httpsig.NonceCache(
            window_seconds=2 * max_skew, max_per_key=DEVICE_NONCES_PER_KEY
        )
        self.stranger_nonces = httpsig.NonceCache(
            window_seconds=2 * max_skew,
            max_entries=STRANGER_NONCES,
            max_per_key=STRANGER_NONCES_PER_KEY,
        )
        self._keys: dict[str, DeviceKey] = {}
        self.shared: SharedNonces | None = None  # several processes on one PostgreSQL
        self.heartbeats: dict[str, float] = {}  # since the last flush to the database
        self.last_seen: dict[str, float] = {}  # every device seen by this process

    async def claim(self, keyid: str, nonce: str, now: float) -> None:
        """Refuse a verified request another server process accepted already (sharing
        the database; kernex_server.nonces). Its own replays the in-memory cache refused."""
        if self.shared is None:
            return
        if not await anyio.to_thread.run_sync(self.shared.claim, keyid, nonce, now):
            self.on_reject("replay")
            raise AuthError(401, "request nonce was already used (replay)")

    def forget(self, device_id: str) -> None:
        self._keys.pop(device_id, None)

    def forget_all(self) -> None:
        self._keys.clear()

    async def _key(self, device_id: str) -> DeviceKey | None:
        now = self.clock()
        cached = self._keys.get(device_id)
        if cached is not None and now - cached.loaded_at < KEY_CACHE_SECONDS:
            return cached
        try:
            record = await anyio.to_thread.run_sync(self.store.get_device, device_id)
        except Exception as exc:  # database down: the key we have serves until it is back
            if cached is None or not is_outage(exc):
                raise
            retry_at = now - KEY_CACHE_SECONDS + KEY_RETRY_SECONDS
            self._keys[device_id] = replace(cached, loaded_at=retry_at)
            return cached
        if record is None:
            self._keys.pop(device_id, None)
            return None
        try:
            key = keys.load_public_key_pem(record.public_key, source=f"device {device_id}")
        except KeyFormatError:
            return None
        entry = DeviceKey(device_id, key, record.state, now)
        self._keys[device_id] = entry
        return entry

    async def authenticate(
        self, request: Request, body: bytes, *, require_accepted: bool = True
    ) -> AuthenticatedDevice:
        headers = request.headers
        try:
            parsed = httpsig.parse_signature(headers)
        except RequestSignatureError as exc:
            self.on_reject(exc.reason)
            raise AuthError(401, exc.message, hint=exc.hint) from exc
        entry = await self._key(parsed.keyid)
        now = self.clock()
        admitted = entry is not None and entry.state == EnrollmentState.ACCEPTED.value
        try:
            httpsig.verify_request(
                request.method,
                signed_path(request),
                headers,
                body,
                lambda kid: entry.key if entry is not None and kid == entry.device_id else None,
                now=now,
                nonces=self.nonces if admitted else self.stranger_nonces,
                max_skew=self.max_skew,
            )
            if admitted and self.stranger_nonces.seen(parsed.keyid, parsed.nonce, now):
                # signed while the device was still pending, replayed after admission
                raise RequestSignatureError("replay", "request nonce was already used (replay)")
        except RequestSignatureError as exc:
            self.on_reject(exc.reason)
            raise AuthError(401, exc.message, hint=exc.hint) from exc
        if entry is None:  # verify_request raised unknown_key already
            self.on_reject("unknown_key")
            raise AuthError(401, "unknown device")
        if request.method != "GET":  # it changes state: once across every process
            await self.claim(parsed.keyid, parsed.nonce, now)
        self.heartbeats[entry.device_id] = now
        self.last_seen[entry.device_id] = now
        retry = self.limiter.take(entry.device_id)
        if retry is not None:
            self.on_reject("rate_limited")
            raise rate_limited(f"device {entry.device_id}", retry)
        if require_accepted and entry.state != EnrollmentState.ACCEPTED.value:
            self.on_reject("forbidden")
            raise AuthError(
                403,
                f"device {entry.device_id} is {entry.state}",
                hint="An admin must accept the device (`kernex devices accept`)."
                if entry.state == EnrollmentState.PENDING.value
                else None,
            )
        return AuthenticatedDevice(entry.device_id, entry.state)

    def take_heartbeats(self) -> Mapping[str, float]:
        seen, self.heartbeats = self.heartbeats, {}
        return seen

    def pending_heartbeat(self, device_id: str) -> float | None:
        return self.last_seen.get(device_id)


def error_body(message: str, hint: str | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"error": message}
    if hint:
        body["hint"] = hint
    body.update(extra)
    return body
