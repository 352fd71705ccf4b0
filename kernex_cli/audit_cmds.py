"""``kernex audit``: who did what, when, and from where (newest first)."""

from __future__ import annotations

import re
from typing import Annotated

import typer
from rich.table import Table

from kernex_cli.client import ServerOption, TokenOption
from kernex_cli.output import console, print_json, safe
from kernex_cli.views import JsonOption, admin_session, ago, parse_duration

_RFC3339_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T")


def _since(value: str | None) -> str | None:
    """A duration ("1h", "7d") or an RFC 3339 time; the server takes both."""
    if value is not None and not _RFC3339_RE.match(value):
        parse_duration(value)  # a typo is a usage error here, not a 400 from the server
    return value


def audit(
    since: Annotated[
        str | None,
        typer.Option("--since", help="Entries newer than a duration (1h, 7d) or an RFC 3339 time."),
    ] = None,
    actor: Annotated[
        str | None, typer.Option("--actor", help="Only this actor (token name).")
    ] = None,
    target: Annotated[
        str | None, typer.Option("--target", help="Only acts on this target.")
    ] = None,
    action: Annotated[str | None, typer.Option("--action", help="Only this action.")] = None,
    limit: Annotated[
        int, typer.Option("--limit", min=1, max=1000, help="At most this many.")
    ] = 100,
    server: ServerOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show the audit log, newest first.

    Example: kernex audit --since 24h --actor ci-deploy
    """
    params = {
        "since": _since(since),
        "actor": actor,
        "target": target,
        "action": action,
        "limit": limit,
    }
    with admin_session(server, token) as client:
        entries = client.get("/v1/admin/audit", **params)["entries"]
    if as_json:
        print_json({"entries": entries})
        return
    if not entries:
        console.print("no audit entries match")
        return
    table = Table("when", "actor", "action", "target", "from", "result")
    for e in entries:
        result = str(e.get("result") or "")
        table.add_row(
            f"{safe(e.get('at'))} ({ago(e.get('at'))})",
            safe(e.get("actor") or "-"),
            safe(e.get("action") or ""),
            safe(e.get("target") or ""),
            safe(e.get("address") or "-"),
            result if result in ("ok", "") else f"[red]{safe(result)}[/]",
        )
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("audit")(audit)
