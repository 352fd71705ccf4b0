"""Enrollment: make the device key, enroll with the server, pin its manifest key.

The request is signed with the new key (keyid = device id), proving possession. A 429
(the server's per-address enrollment limit) is waited out as its Retry-After says. With
an expected fingerprint, the server must first prove it holds that manifest key
(``GET /v1/server-info?challenge=``), so a wrong server or fingerprint is refused before
the device key, the token or the device id is sent. The
server's manifest key is pinned only if its fingerprint matches the id the server gave
and, when the operator passed one, the fingerprint they expect.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from kernex_agent import AGENT_VERSION
from kernex_agent.client import DeviceClient
from kernex_agent.config import AgentConfig, Layout
from kernex_agent.errors import AgentStateError, EnrollmentError
from kernex_agent.state import AgentState, dump_json, read_json
from kernex_agent.storage import DeviceFS
from kernex_core import keys, serverinfo
from kernex_core.errors import KeyFormatError
from kernex_core.protocol import DEVICE_ID_PATTERN, EnrollmentState, EnrollRequest
from kernex_core.release import ReleaseKeySet
from kernex_core.trust import TrustAnchors

MAX_INFO_BYTES = 64 * 1024  # bytes read of a server-info answer
RATE_LIMIT_PATIENCE = 300.0  # seconds an enrollment waits out 429s and 503s without max_wait


@dataclass(frozen=True)
class EnrollResult:
    device_id: str
    state: EnrollmentState
    manifest_key_id: str
    fingerprint_checked: bool
    device_key_id: str
    trust_mode: str


def default_device_id() -> str:
    name = re.sub(r"[^a-z0-9._-]+", "-", socket.gethostname().lower()).strip("-._")
    return (name or "device")[:63]


def load_release_keys(paths: Sequence[Path]) -> ReleaseKeySet | None:
    if not paths:
        return None
    pinned: dict[str, keys.PublicKey] = {}
    for path in paths:
        try:
            key = keys.load_public_key_pem(Path(path).read_bytes(), source=str(path))
        except OSError as exc:
            raise KeyFormatError(
                f"cannot read release key {path}: {exc.strerror}",
                hint="Pass the .pub file `kernex keys create-release-key` wrote.",
            ) from exc
        pinned[keys.fingerprint(key)] = key
    return ReleaseKeySet(version=0, keys=pinned, threshold=1)


def _device_key(layout: Layout, fs: DeviceFS) -> keys.PrivateKey:
    if layout.key.exists():  # re-enrollment keeps the device's identity
        return keys.load_private_key_pem(layout.key.read_bytes(), source=str(layout.key))
    key = keys.generate_ed25519()
    fs.write_atomic(layout.key, keys.private_key_to_pem(key), mode=0o600)
    return key


async def check_server(
    http: httpx.AsyncClient, server_url: str, expected: str, *, timeout: float = 30.0
) -> serverinfo.ServerInfo:
    """Ask the server to prove it holds the manifest key ``expected`` names."""
    challenge = serverinfo.new_challenge()
    url = server_url.rstrip("/") + serverinfo.SERVER_INFO_PATH
    try:
        async with asyncio.timeout(timeout):
            async with http.stream(
                "GET", url, params={"challenge": challenge}, timeout=httpx.Timeout(timeout)
            ) as resp:
                content = bytearray()
                async for chunk in resp.aiter_bytes():
                    content += chunk
                    if len(content) > MAX_INFO_BYTES:
                        raise EnrollmentError("the server-info answer is too large")
    except (TimeoutError, httpx.HTTPError) as exc:
        raise EnrollmentError(
            f"cannot reach {url}: {exc!r}", hint="Check --server and that the server runs."
        ) from exc
    if resp.status_code == 404:
        raise EnrollmentError(
            f"{server_url} does not answer {serverinfo.SERVER_INFO_PATH}, so its manifest key "
            "cannot be checked before enrolling",
            hint="Upgrade the server, or check the URL.",
        )
    if resp.status_code != 200:
        raise EnrollmentError(f"{url} answered {resp.status_code}")
    try:
        answer = json.loads(content)
    except (ValueError, RecursionError) as exc:
        raise EnrollmentError(f"{url} did not answer JSON") from exc
    try:
        return serverinfo.verify(answer, challenge=challenge, expected_key_id=expected)
    except serverinfo.ServerInfoError as exc:
        raise EnrollmentError(
            f"refusing to enroll: {exc.message}", hint=exc.hint or "Check the server URL."
        ) from exc


async def enroll(
    http: httpx.AsyncClient,
    *,
    server_url: str,
    data_dir: Path,
    device_id: str,
    token: str | None,
    labels: Mapping[str, str],
    wait_for_approval: bool,
    expected_fingerprint: str | None = None,
    release_key_files: Sequence[Path] = (),
    clock: Callable[[], float],
    sleep: Callable[[float], Awaitable[None]],
    poll_interval: float = 10.0,
    max_wait: float | None = None,
    fs: DeviceFS | None = None,
) -> EnrollResult:
    if not re.match(DEVICE_ID_PATTERN, device_id):
        raise EnrollmentError(
            f"device id {device_id!r} is not valid",
            hint="Use lower-case letters, digits, '.', '_' and '-' (at most 63), "
            "starting with a letter or digit.",
        )
    fs = fs or DeviceFS()
    release = load_release_keys(release_key_files)
    if expected_fingerprint is not None:  # before a key, a token or a device id is sent
        await check_server(http, server_url, expected_fingerprint)
    layout = Layout(data_dir)
    try:
        fs.mkdir(layout.root, mode=0o700)
    except OSError as exc:
        raise AgentStateError(
            f"cannot create the data directory {layout.root}: {exc.strerror}",
            hint="Run as a user who may write there (the default needs root), or pass "
            "--data-dir DIR.",
        ) from exc
    key = _device_key(layout, fs)
    client = DeviceClient(http, server_url, device_id, key, clock=clock)
    request = EnrollRequest(
        device_id=device_id,
        public_key=keys.public_key_to_pem(key.public_key()),
        labels=dict(labels),
        agent_version=AGENT_VERSION,
        enrollment_token=token,
    )
    started = clock()
    limit = max_wait if max_wait is not None else RATE_LIMIT_PATIENCE
    while True:
        answer = await client.enroll(request)
        response = answer.response
        if answer.status in (429, 503):  # rate limited, or the server's database is down
            wait = max(1.0, answer.retry_after or poll_interval)
            if clock() - started + wait > limit:
                raise _unavailable(answer.status, answer.error, wait)
            await sleep(wait)
            continue
        if response is None and answer.status >= 500:
            raise EnrollmentError(
                f"the server failed ({answer.status}): {answer.error}",
                hint="The enrollment token was not the problem; the server's log says what "
                "failed. Try again later.",
            )
        if response is None:
            raise EnrollmentError(
                f"enrollment refused ({answer.status}): {answer.error}",
                hint="Check the enrollment token, or ask an admin to accept the device.",
            )
        if response.state in (EnrollmentState.REJECTED, EnrollmentState.REVOKED):
            raise EnrollmentError(
                f"the server says this device is {response.state.value}",
                hint="Ask an admin (`kernex devices accept`).",
            )
        if response.state is EnrollmentState.ACCEPTED or not wait_for_approval:
            break
        if max_wait is not None and clock() - started > max_wait:
            raise EnrollmentError("still waiting for approval", hint="`kernex devices accept`.")
        await sleep(poll_interval)
    manifest_key = keys.load_public_key_pem(
        response.manifest_public_key, source="server manifest key"
    )
    key_id = keys.fingerprint(manifest_key)
    if key_id != response.manifest_key_id:
        raise EnrollmentError(
            f"server's manifest key has fingerprint {key_id}, but it announced "
            f"{response.manifest_key_id}"
        )
    if expected_fingerprint is not None and key_id != expected_fingerprint:
        raise EnrollmentError(
            f"server's manifest key is {key_id}, not the expected {expected_fingerprint}",
            hint="You may be talking to another server; check the URL and the fingerprint.",
        )
    config = AgentConfig(server_url=server_url, device_id=device_id, data_dir=Path(data_dir))
    prior = read_json(layout.state)
    state = AgentState.from_dict(prior) if prior else AgentState(trust={})
    highest = int(state.trust.get("highest_serial") or 0)  # never reset rollback protection
    anchors = TrustAnchors(device_id, {key_id: manifest_key}, release, highest)
    state.trust = anchors.to_dict()
    fs.write_atomic(layout.state, dump_json(state.to_dict()), mode=0o600)
    fs.write_atomic(layout.config, dump_json(config.to_dict()), mode=0o600)
    return EnrollResult(
        device_id=device_id,
        state=response.state,
        manifest_key_id=key_id,
        fingerprint_checked=expected_fingerprint is not None,
        device_key_id=keys.fingerprint(key.public_key()),
        trust_mode=anchors.trust_mode,
    )


def _unavailable(status: int, error: str, wait: float) -> EnrollmentError:
    """The server asked us to come back later (429, 503) for longer than we wait."""
    if status == 429:
        return EnrollmentError(
            f"the server is limiting enrollments from this address: {error}",
            hint=f"Try again in {wait:.0f} s, or ask the server admin to raise "
            "enroll_rate/enroll_burst.",
        )
    return EnrollmentError(
        f"the server is unavailable (503): {error}",
        hint=f"The enrollment token was not checked: the server cannot serve right now "
        f"(e.g. its database is down). Try again in {wait:.0f} s or later.",
    )
