"""``kernex enroll-tokens create|list|revoke``: tokens that admit devices at enrollment."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from kernex_cli.client import ServerOption, TokenOption
from kernex_cli.output import console, print_json, safe
from kernex_cli.views import JsonOption, admin_session, ago, duration_option, parse_duration

enroll_tokens_app = typer.Typer(
    help="Create, list and revoke enrollment tokens (they admit devices).",
    no_args_is_help=True,
)


@enroll_tokens_app.command("create")
def create(
    name: Annotated[str, typer.Option("--name", help="What the token is for.")] = "enrollment",
    expires_in: Annotated[
        str,
        typer.Option("--expires-in", help="Lifetime, e.g. 30m, 24h, 7d.", callback=duration_option),
    ] = "24h",
    uses: Annotated[
        int | None,
        typer.Option("--uses", min=1, help="How many devices may use it (default: any)."),
    ] = None,
    server: ServerOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create an enrollment token; the secret is shown once.

    Example: kernex enroll-tokens create --name berlin-rollout --expires-in 7d --uses 50
    """
    body = {"name": name, "expires_in": parse_duration(expires_in), "max_uses": uses}
    with admin_session(server, token) as client:
        created = client.post("/v1/admin/enrollment-tokens", body)
    if as_json:
        print_json(created)
        return
    console.print(
        f"enrollment token [bold]{safe(created['id'])}[/] ({safe(created['name'])}), expires "
        f"{ago(created.get('expires_at'))}, uses {safe(created.get('max_uses') or 'unlimited')}",
        highlight=False,
    )
    console.print("token (shown once; give it to `kernex agent enroll --token`):", style="dim")
    typer.echo(created["token"])


@enroll_tokens_app.command("list")
def list_tokens(
    server: ServerOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """List enrollment tokens (never their secrets).

    Example: kernex enroll-tokens list --json
    """
    with admin_session(server, token) as client:
        answer = client.get("/v1/admin/enrollment-tokens")
    tokens = answer["tokens"]
    if as_json:
        print_json({"tokens": tokens})
        return
    if not tokens:
        console.print("no enrollment tokens")
        return
    table = Table("id", "name", "uses", "expires", "created by", "state")
    for t in tokens:
        state = "[red]revoked[/]" if t.get("revoked_at") else "active"
        table.add_row(
            safe(t["id"]),
            safe(t.get("name") or ""),
            safe(f"{t.get('uses', 0)}/{t.get('max_uses') or '∞'}"),
            ago(t.get("expires_at")),
            safe(t.get("created_by") or "-"),
            state,
        )
    console.print(table)


@enroll_tokens_app.command("revoke")
def revoke(
    token_id: Annotated[int, typer.Argument(metavar="ID", help="The token id (see list).")],
    server: ServerOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Revoke an enrollment token; devices can no longer enroll with it.

    Example: kernex enroll-tokens revoke 3
    """
    with admin_session(server, token) as client:
        client.delete(f"/v1/admin/enrollment-tokens/{token_id}")
    if as_json:
        print_json({"id": token_id, "revoked": True})
        return
    console.print(f"enrollment token {token_id} revoked", highlight=False)


def register(app: typer.Typer) -> None:
    app.add_typer(enroll_tokens_app, name="enroll-tokens")
