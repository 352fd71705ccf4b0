"""``kernex server info``: which server this is, asked over the network (no token needed).

It prints the server URL, its version and its manifest key fingerprint, after the server
proved it holds that key by signing a fresh challenge (``GET /v1/server-info``). Compare
the fingerprint with what ``kernex agent enroll`` printed, or pass it to
``kernex agent enroll --server-key-fingerprint`` so the agent checks it before enrolling.
"""

from __future__ import annotations

from typing import Annotated

import typer

from kernex_cli.client import ClientError, ServerOption, resolve_server
from kernex_cli.output import console, fail, fail_from, print_json, safe
from kernex_cli.views import JsonOption


def info(
    server: ServerOption = None,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait.")] = 30.0,
    as_json: JsonOption = False,
) -> None:
    """Print the server's URL, version and manifest key fingerprint (proven by the server).

    Example: kernex server info --server https://kernex.example:8443
    """
    import httpx

    from kernex_core import serverinfo
    from kernex_git import redact_url

    try:
        url = resolve_server(server)
    except ClientError as exc:
        fail_from(exc)
    shown = redact_url(url)
    challenge = serverinfo.new_challenge()
    try:
        response = httpx.get(
            url + serverinfo.SERVER_INFO_PATH, params={"challenge": challenge}, timeout=timeout
        )
    except httpx.HTTPError as exc:
        fail(
            f"cannot reach the Kernex server at {shown} ({type(exc).__name__})",
            hint="Check the URL (--server, KERNEX_SERVER or `kernex login`) and that "
            "`kernex server run` is up.",
        )
    if response.status_code != 200:
        fail(
            f"{shown} answered {response.status_code} to {serverinfo.SERVER_INFO_PATH}",
            hint="Is this a Kernex server, of this version or newer?",
        )
    try:
        proven = serverinfo.verify(response.json(), challenge=challenge)
    except ValueError:
        fail(f"{shown} did not answer JSON", hint="Is this a Kernex server?")
    except serverinfo.ServerInfoError as exc:
        fail_from(exc)
    if as_json:
        print_json(
            {
                "server": shown,
                "url": proven.url,
                "version": proven.version,
                "manifest_key_id": proven.manifest_key_id,
                "proven": True,
            }
        )
        return
    console.print(f"server:       {safe(shown)}", highlight=False)
    console.print(f"version:      {safe(proven.version)}", highlight=False)
    console.print(
        f"manifest key: {safe(proven.manifest_key_id)} (the server signed a fresh "
        "challenge with it)",
        highlight=False,
    )
    console.print(
        "enroll devices with: kernex agent enroll --server "
        f"{safe(shown)} --server-key-fingerprint {safe(proven.manifest_key_id)} ...",
        highlight=False,
        soft_wrap=True,
    )


def register(server_app: typer.Typer) -> None:
    server_app.command("info")(info)
