"""``kernex tokens create|list|revoke``: admin API tokens with a role (admin only)."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer
from rich.table import Table

from kernex_cli.client import ServerOption, TokenOption
from kernex_cli.output import console, print_json, safe
from kernex_cli.views import JsonOption, admin_session, ago, duration_option, parse_duration

tokens_app = typer.Typer(
    help="Create, list and revoke admin API tokens (viewer, operator, admin).",
    no_args_is_help=True,
)


class RoleName(StrEnum):
    viewer = "viewer"
    operator = "operator"
    admin = "admin"


@tokens_app.command("create")
def create(
    name: Annotated[str, typer.Option("--name", help="A unique name, e.g. ci-deploy.")],
    role: Annotated[
        RoleName, typer.Option("--role", help="viewer (read), operator (deploy), admin (all).")
    ],
    expires_in: Annotated[
        str | None,
        typer.Option(
            "--expires-in",
            help="Lifetime, e.g. 90d (default: no expiry).",
            callback=duration_option,
        ),
    ] = None,
    server: ServerOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create an API token; the secret is shown once.

    Example: kernex tokens create --name ci-deploy --role operator --expires-in 90d
    """
    body = {
        "name": name,
        "role": role.value,
        "expires_in": parse_duration(expires_in) if expires_in else None,
    }
    with admin_session(server, token) as client:
        created = client.post("/v1/admin/tokens", body)
    if as_json:
        print_json(created)
        return
    expiry = ago(created.get("expires_at")) if created.get("expires_at") else "never"
    console.print(
        f"token [bold]{safe(created['name'])}[/] (id {safe(created['id'])}, "
        f"{safe(created['role'])}), "
        f"expires {expiry}",
        highlight=False,
    )
    console.print("token (shown once; store it now):", style="dim")
    typer.echo(created["token"])


@tokens_app.command("list")
def list_tokens(
    server: ServerOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """List API tokens (never their secrets).

    Example: kernex tokens list
    """
    with admin_session(server, token) as client:
        tokens = client.get("/v1/admin/tokens")["tokens"]
    if as_json:
        print_json({"tokens": tokens})
        return
    table = Table("id", "name", "role", "created by", "created", "expires", "last used", "state")
    for t in tokens:
        table.add_row(
            safe(t["id"]),
            safe(t["name"]),
            safe(t["role"]),
            safe(t.get("created_by") or "-"),
            ago(t.get("created_at")),
            ago(t.get("expires_at")) if t.get("expires_at") else "never",
            ago(t.get("last_used_at")),
            "[red]revoked[/]" if t.get("revoked") else "active",
        )
    console.print(table)


@tokens_app.command("revoke")
def revoke(
    token_id: Annotated[int, typer.Argument(metavar="ID", help="The token id (see list).")],
    server: ServerOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Revoke an API token at once (a token cannot revoke itself).

    Example: kernex tokens revoke 4
    """
    with admin_session(server, token) as client:
        revoked = client.delete(f"/v1/admin/tokens/{token_id}")
    if as_json:
        print_json(revoked)
        return
    console.print(
        f"token {safe(revoked['name'])} (id {safe(revoked['id'])}) revoked", highlight=False
    )


def register(app: typer.Typer) -> None:
    app.add_typer(tokens_app, name="tokens")
