"""``kernex alerts``: see the alert receivers and outbox, send a test alert.

Receivers are declared in the server's ``server.toml`` (docs/operations.md#alerts).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from kernex_cli.client import ServerOption, TokenOption
from kernex_cli.output import console, print_json, safe
from kernex_cli.views import JsonOption, admin_session

alerts_app = typer.Typer(
    help="Alert receivers (webhooks, Slack) and the alert outbox.", no_args_is_help=True
)


@alerts_app.command("test")
def send_test(
    receiver: Annotated[
        str | None, typer.Option("--receiver", help="Only this receiver (its name).")
    ] = None,
    server: ServerOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Send a sample alert to every receiver (or one) now, and say how each answered.

    Exits 1 when a receiver did not take it. Needs an admin token.

    Example: kernex alerts test --receiver ops
    """
    body = {"receiver": receiver} if receiver else {}
    with admin_session(server, token) as client:
        deliveries: list[dict[str, Any]] = client.post("/v1/admin/alerts/test", body)["deliveries"]
    if as_json:
        print_json({"deliveries": deliveries})
    else:
        for d in deliveries:
            if d["state"] == "delivered":
                console.print(
                    f"{safe(d['receiver'])}: delivered (HTTP {safe(d['status'])})", highlight=False
                )
            else:
                console.print(
                    f"{safe(d['receiver'])}: [red]not delivered[/]: {safe(d['error'])}",
                    highlight=False,
                )
        if not deliveries:
            console.print("no receiver takes test alerts")
    if any(d["state"] != "delivered" for d in deliveries):
        if not as_json:
            console.print(
                "Check the receiver's URL and that it answers 2xx; `kernex alerts list` shows "
                "the outbox.",
                highlight=False,
            )
        raise typer.Exit(1)


@alerts_app.command("list")
def list_alerts(
    server: ServerOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show the alert receivers, the outbox counts and the newest alerts.

    Example: kernex alerts list
    """
    with admin_session(server, token) as client:
        shown = client.get("/v1/admin/alerts")
    if as_json:
        print_json(shown)
        return
    if not shown["receivers"]:
        console.print(
            "no alert receivers; add \\[\\[alerts]] to server.toml (docs/operations.md)",
            highlight=False,
        )
        return
    for r in shown["receivers"]:
        line = f"{r['name']} ({r['format']}) {r['url']}: {', '.join(r['events'])}"
        console.print(safe(line), highlight=False)
    counts = shown["outbox"]
    console.print(
        f"outbox: {counts.get('pending', 0)} pending, {counts.get('delivered', 0)} delivered, "
        f"{counts.get('failed', 0)} failed",
        highlight=False,
    )
    if shown["recent"]:
        table = Table("id", "receiver", "kind", "state", "tries", "created", "summary")
        for a in shown["recent"]:
            state = safe(a["state"]) if a["state"] != "failed" else "[red]failed[/]"
            if a["state"] == "pending" and a["last_error"]:
                state = f"pending ({safe(a['last_error'])})"
            table.add_row(
                safe(a["id"]),
                safe(a["receiver"]),
                safe(a["kind"]),
                state,
                safe(a["attempts"]),
                safe(a["created_at"]),
                safe(a["summary"]),
            )
        console.print(table)


def register(app: typer.Typer) -> None:
    app.add_typer(alerts_app, name="alerts")
