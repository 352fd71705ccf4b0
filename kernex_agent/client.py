"""The HTTP edge: the device's requests to the server, each signed with the device key.

``DeviceClient`` wraps an ``httpx.AsyncClient`` (injected, so a test hands in a
MockTransport and a fleet simulator shares one pool). Deadlines are enforced here with
``asyncio.timeout`` as well as httpx's own, so a stalled server or a mock cannot hang the
agent; every httpx exception becomes a ``ServerUnreachableError`` or ``DownloadError``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx

from kernex_agent.errors import DownloadError, ServerResponseError, ServerUnreachableError
from kernex_agent.storage import DeviceFS
from kernex_core import keys
from kernex_core.httpsig import sign_request
from kernex_core.protocol import (
    ENROLL_PATH,
    MANIFEST_PATH,
    STATUS_PATH,
    EnrollRequest,
    EnrollResponse,
    StatusReport,
)

MAX_ANSWER_BYTES = 64 * 1024  # bytes read of an enrollment, status or error answer
UNREACHABLE_HINT = (
    "Check the server URL (--server) and that `kernex server run` is up and reachable from here."
)


@dataclass(frozen=True)
class _Answer:
    status_code: int
    headers: httpx.Headers
    content: bytes  # at most the request's max_bytes + 1


@dataclass(frozen=True)
class EnrollAnswer:
    status: int
    response: EnrollResponse | None  # None: refused, see ``error``
    error: str
    retry_after: float | None = None  # seconds, from a 429's Retry-After


@dataclass(frozen=True)
class ManifestFetch:
    raw: bytes | None  # None: not modified (304)
    etag: str | None


class DeviceClient:
    def __init__(
        self,
        http: httpx.AsyncClient,
        server_url: str,
        device_id: str,
        key: keys.PrivateKey,
        *,
        clock: Callable[[], float],
        request_timeout: float = 30.0,
    ) -> None:
        self.http = http
        self.server_url = server_url.rstrip("/") + "/"
        self.device_id = device_id
        self.key = key
        self.clock = clock
        self.request_timeout = request_timeout
        self._origin = _origin(self.server_url)

    def resolve(self, url: str) -> str:
        """Bundle URLs may be relative to the server (``/v1/bundles/..``) or absolute (CDN)."""
        return urljoin(self.server_url, url)

    def _signed(self, method: str, url: str, body: bytes = b"") -> dict[str, str]:
        if _origin(url) != self._origin:
            return {}  # another origin (a CDN) gets no device signature
        path = urlsplit(url).path or "/"
        return sign_request(method, path, body, self.key, self.device_id, created=int(self.clock()))

    async def _request(
        self,
        method: str,
        path: str,
        *,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        params: dict[str, Any] | None = None,
        timeout: float,
        max_bytes: int = MAX_ANSWER_BYTES,
    ) -> _Answer:
        """Send a signed request; read at most ``max_bytes`` + 1 bytes of the answer.

        The body is streamed, never read whole, so a server that sends without end cannot
        fill the device's memory; a longer body comes back cut at ``max_bytes`` + 1.
        """
        url = self.resolve(path)
        hdrs = {**(headers or {}), **self._signed(method, url, body)}
        hdrs["Accept-Encoding"] = "identity"
        if body:
            hdrs["Content-Type"] = "application/json"
        try:
            async with asyncio.timeout(timeout):
                async with self.http.stream(
                    method,
                    url,
                    content=body or None,
                    headers=hdrs,
                    params=params,
                    timeout=httpx.Timeout(timeout),
                ) as resp:
                    content = bytearray()
                    async for chunk in resp.aiter_bytes():
                        content += chunk
                        if len(content) > max_bytes:
                            del content[max_bytes + 1 :]
                            break
                    return _Answer(resp.status_code, resp.headers, bytes(content))
        except TimeoutError as exc:
            raise ServerUnreachableError(
                f"{method} {path} at {self._where()}: no answer in {timeout:g} s",
                hint=UNREACHABLE_HINT,
            ) from exc
        except httpx.HTTPError as exc:
            raise ServerUnreachableError(
                f"{method} {path} at {self._where()}: {exc!r}", hint=UNREACHABLE_HINT
            ) from exc

    def _where(self) -> str:
        """The server's scheme and host, never a user or password in the URL."""
        scheme, netloc = self._origin
        return f"{scheme}://{netloc.rpartition('@')[2]}"

    async def enroll(self, request: EnrollRequest) -> EnrollAnswer:
        body = json.dumps(request.to_dict()).encode()
        resp = await self._request("POST", ENROLL_PATH, body=body, timeout=self.request_timeout)
        if resp.status_code >= 400:
            retry = _seconds(resp.headers.get("retry-after"))
            return EnrollAnswer(resp.status_code, None, _error_text(resp), retry)
        try:
            answer = EnrollResponse.from_dict(json.loads(resp.content))
            return EnrollAnswer(resp.status_code, answer, "")
        except (ValueError, KeyError, RecursionError) as exc:
            raise ServerResponseError(
                resp.status_code, f"enrollment answer is malformed: {exc}"
            ) from exc

    async def fetch_manifest(self, etag: str | None, wait: int, max_bytes: int) -> ManifestFetch:
        path = MANIFEST_PATH.format(device_id=self.device_id)
        headers = {"If-None-Match": etag} if etag else {}
        resp = await self._request(
            "GET",
            path,
            headers=headers,
            params={"wait": wait},
            timeout=wait + self.request_timeout,
            max_bytes=max_bytes,
        )
        if resp.status_code == 304:
            return ManifestFetch(None, etag)
        if resp.status_code != 200:
            raise ServerResponseError(
                resp.status_code,
                f"manifest request answered {resp.status_code}: {_error_text(resp)}",
                hint="401/403: the device is not admitted or was revoked "
                "(`kernex devices accept`).",
            )
        # A body over max_bytes comes cut at max_bytes + 1: the verifier refuses it ("size").
        return ManifestFetch(resp.content, resp.headers.get("etag"))

    async def send_status(self, report: StatusReport) -> int:
        path = STATUS_PATH.format(device_id=self.device_id)
        body = json.dumps(report.to_dict()).encode()
        resp = await self._request("POST", path, body=body, timeout=self.request_timeout)
        return resp.status_code

    async def download(
        self,
        url: str,
        part: Path,
        *,
        size: int,
        sha256: str,
        fs: DeviceFS,
        read_timeout: float,
        min_rate: int,
    ) -> None:
        """Fetch ``url`` into ``part``, resuming with Range; verify size and sha256.

        Reads at most ``size`` bytes. Leaves a partial file for resume on a network error;
        deletes it when the bytes cannot be right.
        """
        full = self.resolve(url)
        offset = part.stat().st_size if part.exists() else 0
        if offset > size:
            fs.unlink(part)
            offset = 0
        digest = hashlib.sha256()
        if offset:  # the bytes kept from an interrupted download count too
            with open(part, "rb") as fh:
                while chunk := fh.read(1024 * 1024):
                    digest.update(chunk)
        if offset < size:  # hashed as they arrive: no second pass over the file
            digest = await self._fetch_range(
                full, part, offset, size, digest, fs, read_timeout, min_rate
            )
        if digest.hexdigest() != sha256:
            fs.unlink(part)
            raise DownloadError(
                f"bundle from {url} has sha256 {digest.hexdigest()}, manifest says {sha256}",
                hint="The store served other bytes than the commit pinned; check the store.",
            )

    async def _fetch_range(
        self,
        url: str,
        part: Path,
        offset: int,
        size: int,
        digest: Any,  # hashlib sha256 of the bytes before offset
        fs: DeviceFS,
        read_timeout: float,
        min_rate: int,
    ) -> Any:
        """Append the bytes from ``offset`` to ``part``; the sha256 of the whole file."""
        headers = self._signed("GET", url)
        headers["Accept-Encoding"] = "identity"  # the sha256 is over the bytes as stored
        if offset:
            headers["Range"] = f"bytes={offset}-"
        deadline = read_timeout + size / max(min_rate, 1)
        written = offset
        try:
            async with asyncio.timeout(deadline):
                async with self.http.stream(
                    "GET", url, headers=headers, timeout=httpx.Timeout(read_timeout)
                ) as resp:
                    if resp.status_code == 416:
                        fs.unlink(part)
                        raise DownloadError(f"{url}: server refused the resume range (416)")
                    if resp.status_code == 200 and offset:
                        fs.unlink(part)  # the server ignored Range: start again
                        written = 0
                        digest = hashlib.sha256()
                    elif resp.status_code not in (200, 206):
                        raise DownloadError(
                            f"download of {url} answered {resp.status_code}",
                            hint="Check that the bundle was pushed to the store.",
                        )
                    fh = fs.open_append(part)
                    try:
                        async for chunk in resp.aiter_bytes():
                            if written + len(chunk) > size:
                                fs.unlink(part)
                                raise DownloadError(
                                    f"{url} sent more than the declared {size} bytes",
                                    hint="The store serves other bytes than the manifest names.",
                                )
                            fs.write_chunk(fh, chunk)
                            digest.update(chunk)
                            written += len(chunk)
                        fs.sync_file(fh)
                    finally:
                        fh.close()
        except TimeoutError as exc:
            raise DownloadError(
                f"download of {url} timed out after {deadline:g} s at byte {written}"
            ) from exc
        except httpx.HTTPError as exc:
            raise DownloadError(f"download of {url} broke at byte {written}: {exc!r}") from exc
        if written < size:
            raise DownloadError(f"download of {url} ended at byte {written} of {size}")
        return digest


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc


def _seconds(raw: str | None) -> float | None:
    """A Retry-After in seconds (the server sends whole seconds; a date is ignored)."""
    return float(raw) if raw is not None and raw.strip().isdigit() else None


def _error_text(resp: _Answer) -> str:
    try:
        data = json.loads(resp.content)
    except (ValueError, RecursionError):
        return resp.content[:500].decode("utf-8", "replace")
    if isinstance(data, dict):
        return str(data.get("error") or data.get("detail") or data)[:500]
    return str(data)[:500]
