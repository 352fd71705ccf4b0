"""``kernex status [--watch] [--json]``: the fleet at a glance.

Reads ``GET /v1/admin/status`` (revision, reconcile and Git fetch state, device counts,
rollouts) and ``GET /v1/admin/devices`` (names of the devices that are out of sync or
offline).
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from kernex_cli.client import AdminClient, ServerOption, TokenOption
from kernex_cli.output import console, print_json, safe
from kernex_cli.views import JsonOption, admin_session, ago, out_of_sync, phase_text, short

NAMES_SHOWN = 20  # devices named per list in the table view; --json has all


def fetch_status(client: AdminClient) -> dict[str, Any]:
    status: dict[str, Any] = client.get("/v1/admin/status")
    devices = client.get("/v1/admin/devices")["devices"]
    accepted = [d for d in devices if d.get("state") == "accepted"]
    status["out_of_sync_devices"] = sorted(d["id"] for d in accepted if out_of_sync(d))
    status["offline_devices"] = sorted(d["id"] for d in accepted if not d.get("online"))
    status["pending_devices"] = sorted(d["id"] for d in devices if d.get("state") == "pending")
    return status


def _names(names: list[str]) -> str:
    shown = safe(", ".join(names[:NAMES_SHOWN]), lines=False)
    more = len(names) - NAMES_SHOWN
    return shown + (f" and {more} more" if more > 0 else "") if names else "-"


def _git_text(git: dict[str, Any]) -> str:
    done = f"last success {ago(git.get('last_success_at'))}"
    if git.get("running_since"):
        done = f"running since {ago(git['running_since'])}, {done}"
    if git.get("problem"):
        return f"[red]{safe(git['problem'])}[/] ({done})"
    return done


def render_status(status: dict[str, Any], server: str) -> RenderableType:
    rev = status.get("revision") or {}
    dev = status.get("devices") or {}
    result = rev.get("last_result")
    result_text = {
        "ok": "[green]ok[/]",
        None: "[dim]none yet[/]",
    }.get(result, f"[red]{safe(result)}[/]")
    facts = Table.grid(padding=(0, 2))
    facts.add_row("server", safe(server))
    facts.add_row(
        "revision",
        f"deployed {short(rev.get('deployed'))}, newest {short(rev.get('current'))}"
        + ("  [yellow](force-pushed)[/]" if rev.get("forced") else ""),
    )
    facts.add_row("reconcile", f"{result_text}, {ago(rev.get('last_reconcile_at'))}")
    if rev.get("last_error"):
        facts.add_row("last error", f"[red]{safe(rev['last_error'])}[/]")
    git = status.get("git")
    if git:
        facts.add_row("git fetch", _git_text(git))
    for warning in rev.get("warnings") or []:
        facts.add_row(
            "missing bundle",
            f"[yellow]{safe(warning.get('bundle'))}@{safe(warning.get('version'))}[/]: "
            f"{safe(warning.get('message'))} {safe(warning.get('hint') or '')}",
        )
    facts.add_row(
        "devices",
        f"{safe(dev.get('total', 0))} total, [green]{safe(dev.get('online', 0))} online[/], "
        f"{safe(dev.get('offline', 0))} offline, {safe(dev.get('pending', 0))} pending admission",
    )
    by_phase = dev.get("by_phase") or {}
    facts.add_row(
        "phases",
        ", ".join(f"{phase_text(p)} {safe(n)}" for p, n in sorted(by_phase.items())) or "-",
    )
    facts.add_row(
        "out of sync",
        f"{safe(dev.get('out_of_sync', 0))}: {_names(status.get('out_of_sync_devices', []))}",
    )
    facts.add_row("offline", _names(status.get("offline_devices", [])))
    if status.get("pending_devices"):
        facts.add_row("pending", _names(status["pending_devices"]))
    rollouts = status.get("rollouts") or {}
    halted = rollouts.get("halted", 0)
    stopped = f", [red]{safe(halted)} halted[/] (kernex rollouts list --state halted)"
    active = f"{safe(rollouts.get('active', 0))} active"
    facts.add_row("rollouts", active + (stopped if halted else ""))
    facts.add_row("bundles", f"{safe(status.get('bundles', 0))} stored")
    parts: list[RenderableType] = [facts]
    errors = rev.get("errors") or []
    if errors:
        table = Table(
            "file", "line", "key", "problem", title="validation errors of the newest commit"
        )
        for e in errors:
            table.add_row(
                safe(e.get("file") or "-"),
                safe(e.get("line") or "-"),
                safe(e.get("key_path") or "-"),
                safe(e.get("message") or e),
            )
        parts.append(table)
    return Group(*parts)


def status(
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Refresh until Ctrl-C.")] = False,
    interval: Annotated[
        float, typer.Option("--interval", min=0.2, help="Seconds between refreshes with --watch.")
    ] = 2.0,
    server: ServerOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show the deployed revision, reconcile state, devices per phase and what lags behind.

    Exits 1 when the newest commit was not deployed (invalid, unsigned or an error).

    Example: kernex status --watch
    """
    with admin_session(server, token) as client:
        if watch and not as_json:
            _watch(client, interval)
            return
        current = fetch_status(client)
    if as_json:
        print_json(current)
    else:
        console.print(render_status(current, client.connection.server), highlight=False)
    if (current.get("revision") or {}).get("last_result") not in (None, "ok"):
        raise typer.Exit(1)


def _watch(client: AdminClient, interval: float) -> None:
    from rich.live import Live

    with Live(Text("loading..."), console=console, auto_refresh=False) as live:
        try:
            while True:
                view = render_status(fetch_status(client), client.connection.server)
                live.update(
                    Group(
                        view, Text(f"refreshing every {interval:g}s; Ctrl-C to stop", style="dim")
                    ),
                    refresh=True,
                )
                time.sleep(interval)
        except KeyboardInterrupt:
            pass


def register(app: typer.Typer) -> None:
    app.command("status")(status)
