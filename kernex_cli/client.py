"""The admin API client the CLI's server commands share, and where its connection comes from.

Connection settings, first found wins: ``--server``/``--token`` flags, the environment
(``KERNEX_SERVER``, ``KERNEX_TOKEN``), then the file ``kernex login`` saved
(``$XDG_CONFIG_HOME/kernex/credentials.json``, mode 0600).

Errors (all ``ClientError``, each with a hint):

    ClientError
    ├── NotConfiguredError     no server or token given anywhere
    ├── ServerUnreachableError connection refused, DNS, TLS or timeout
    ├── AuthenticationError    401: no, unknown, expired or revoked token
    ├── ForbiddenError         403: the token's role is too low
    └── ApiError               any other error answer; carries the status and the server's hint
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from kernex_core.errors import KernexError
from kernex_core.fsutil import atomic_write_text
from kernex_git import redact_text, redact_url

DEFAULT_TIMEOUT = 30.0


class ClientError(KernexError):
    """The admin API could not be used as asked."""


class NotConfiguredError(ClientError):
    pass


class ServerUnreachableError(ClientError):
    pass


class AuthenticationError(ClientError):
    pass


class ForbiddenError(ClientError):
    pass


class ApiError(ClientError):
    def __init__(self, status: int, message: str, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status = status


def credentials_path(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    base = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME", "~")).expanduser() / ".config")
    return Path(base) / "kernex" / "credentials.json"


@dataclass(frozen=True)
class Connection:
    server: str
    token: str

    @classmethod
    def resolve(
        cls,
        server: str | None,
        token: str | None,
        environ: Mapping[str, str] | None = None,
    ) -> Connection:
        env = os.environ if environ is None else environ
        saved = _saved(env)
        server = server or env.get("KERNEX_SERVER") or saved.get("server")
        token = token or env.get("KERNEX_TOKEN") or saved.get("token")
        if not server or not token:
            raise NotConfiguredError(
                "no Kernex server and token given",
                hint="Pass --server and --token, set KERNEX_SERVER and KERNEX_TOKEN, or run "
                "`kernex login --server URL --token TOKEN`.",
            )
        return cls(server.rstrip("/"), token)

    def save(self, environ: Mapping[str, str] | None = None) -> Path:
        path = credentials_path(environ)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic_write_text(
            path, json.dumps({"server": self.server, "token": self.token}) + "\n", mode=0o600
        )
        return path


def _saved(env: Mapping[str, str]) -> dict[str, Any]:
    """What `kernex login` saved, or nothing."""
    path = credentials_path(env)
    if not path.is_file():
        return {}
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise NotConfiguredError(
            f"cannot read {path}: {exc}", hint="Run `kernex login` again."
        ) from exc
    return saved if isinstance(saved, dict) else {}


def resolve_server(server: str | None, environ: Mapping[str, str] | None = None) -> str:
    """The server URL alone (public endpoints need no token), found as for a connection."""
    env = os.environ if environ is None else environ
    url = server or env.get("KERNEX_SERVER") or _saved(env).get("server")
    if not url:
        raise NotConfiguredError(
            "no Kernex server given",
            hint="Pass --server, set KERNEX_SERVER, or run `kernex login`.",
        )
    return str(url).rstrip("/")


class AdminClient:
    """Calls ``/v1/admin/...`` with the bearer token; answers are decoded JSON."""

    def __init__(
        self,
        connection: Connection,
        *,
        transport: httpx.BaseTransport | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.connection = connection
        self._http = httpx.Client(
            base_url=connection.server,
            headers={"Authorization": f"Bearer {connection.token}"},
            timeout=timeout,
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _mapped(self) -> Iterator[None]:
        try:
            yield
        except httpx.TimeoutException as exc:
            raise ServerUnreachableError(
                f"the Kernex server at {redact_url(self.connection.server)} did not answer in time",
                hint="Check that the server is running and reachable, then try again.",
            ) from exc
        except httpx.TransportError as exc:
            raise ServerUnreachableError(
                f"cannot reach the Kernex server at {redact_url(self.connection.server)} "
                f"({redact_text(str(exc))})",
                hint="Check the URL (--server, KERNEX_SERVER or `kernex login`) and that "
                "`kernex server run` is up.",
            ) from exc

    def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: Mapping[str, Any] | None = None,
        content: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        with self._mapped():
            response = self._http.request(
                method,
                path,
                json=json_body,
                params={k: v for k, v in (params or {}).items() if v is not None},
                content=content,
                headers=headers,
            )
        return self._decode(response)

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params)

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, json_body=body if body is not None else {})

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    @staticmethod
    def _decode(response: httpx.Response) -> Any:
        if response.status_code < 400:
            if not response.content:
                return None
            try:
                return response.json()
            except ValueError as exc:
                raise ApiError(response.status_code, "the server answered with non-JSON") from exc
        try:
            body = response.json()
        except ValueError:
            body = {}
        message = body.get("error") if isinstance(body, dict) else None
        hint = body.get("hint") if isinstance(body, dict) else None
        if response.status_code == 401:
            raise AuthenticationError(
                message or "the server refused the token",
                hint=hint
                or "Check the token (--token, KERNEX_TOKEN or `kernex login`); it "
                "may be expired or revoked.",
            )
        if response.status_code == 403:
            raise ForbiddenError(
                message or "the token's role may not do this",
                hint=hint
                or "Ask an admin for a token with a higher role "
                "(`kernex tokens create --role ...`).",
            )
        if response.status_code == 503:
            retry = response.headers.get("retry-after", "").strip()
            wait = f"in {retry} s" if retry.isdigit() else "in a few seconds"
            raise ApiError(
                503,
                message or "the server is unavailable (503)",
                hint=hint or f"The server (or a proxy before it) cannot serve now; retry {wait}.",
            )
        raise ApiError(
            response.status_code,
            message
            or (
                f"the server failed: it answered {response.status_code} {response.reason_phrase}"
                if response.status_code >= 500
                else f"the server answered {response.status_code}"
            ),
            hint=hint
            or (
                "The server failed; its log says why (`kernex server run` output)."
                if response.status_code >= 500
                else None
            ),
        )


ServerOption = Annotated[
    str | None,
    typer.Option("--server", help="Server URL (else KERNEX_SERVER, else `kernex login`)."),
]
TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token", help="API token (else KERNEX_TOKEN, else `kernex login`).", show_default=False
    ),
]


def connect(server: str | None, token: str | None) -> AdminClient:
    return AdminClient(Connection.resolve(server, token))


ROLE_ORDER = ("viewer", "operator", "admin")


def require_role(client: AdminClient, role: str, doing: str) -> None:
    """ForbiddenError unless the token's role is at least ``role``: asked before a command
    changes anything, so a token that may not finish the job does not start it."""
    who = client.get("/v1/admin/whoami")
    have = who.get("role")
    if have not in ROLE_ORDER or ROLE_ORDER.index(have) < ROLE_ORDER.index(role):
        raise ForbiddenError(
            f"the token {who.get('name')!r} has role {have}; {doing} needs {role} or higher",
            hint="Nothing was committed. Use a token with a higher role (`kernex tokens "
            f"create --role {role}`), or leave out the server part of the command.",
        )


login_app_help = "Save the server URL and token for later commands (0600)."


def login(
    server: Annotated[str, typer.Option("--server", help="Server URL, e.g. http://127.0.0.1:8443")],
    token: Annotated[str, typer.Option("--token", help="An API token.", show_default=False)],
) -> None:
    """Check a server URL and token, and save them for later commands (file mode 0600).

    Example: kernex login --server http://127.0.0.1:8443 --token kx_...
    """
    from kernex_cli.output import console, fail_from

    connection = Connection(server.rstrip("/"), token)
    try:
        with AdminClient(connection) as client:
            who = client.get("/v1/admin/whoami")
    except ClientError as exc:
        fail_from(exc)
    path = connection.save()
    console.print(
        f"logged in to {redact_url(connection.server)} as [bold]{who['name']}[/] ({who['role']}); "
        f"saved to {path}",
        highlight=False,
    )


def register(app: typer.Typer) -> None:
    app.command("login")(login)
