"""``kernex rollouts list|show|pause|resume|promote|abort``: staged rollouts on the server.

A rollout moves one group's change through its waves (docs/rollouts.md); these commands
read them and act on a running one. Every act is audited on the server.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Group, RenderableType
from rich.table import Table

from kernex_cli.client import ServerOption, TokenOption
from kernex_cli.output import console, print_json, safe
from kernex_cli.views import JsonOption, admin_session, ago, phase_text, short

STATE_STYLE = {
    "running": "cyan",
    "paused": "yellow",
    "halted": "red",
    "completed": "green",
    "aborted": "red",
    "superseded": "dim",
}

rollouts_app = typer.Typer(
    help="Staged rollouts: list them, show their waves, pause, resume, promote or abort.",
    no_args_is_help=True,
)

RolloutId = Annotated[int, typer.Argument(help="The rollout's id (see `kernex rollouts list`).")]


def state_text(state: str) -> str:
    style = STATE_STYLE.get(state)
    return f"[{style}]{state}[/]" if style else safe(state, lines=False)


def wave_progress(rollout: dict[str, Any]) -> str:
    """``wave 1/3 (10%): 2 healthy, 1 pending`` for one line of progress."""
    waves = rollout.get("waves") or []
    index = int(rollout.get("wave", 0))
    if not waves:
        return "-"
    w = waves[min(index, len(waves) - 1)]
    parts = [f"{w.get(k, 0)} {k.replace('_', ' ')}" for k in ("healthy", "failed", "pending")]
    parts += [f"{w[k]} {k.replace('_', ' ')}" for k in ("offline", "rolled_back") if w.get(k)]
    text = f"wave {index + 1}/{len(waves)} ({w.get('percent')}%): " + ", ".join(parts)
    if rollout.get("awaiting_promotion"):
        text += " - awaiting `kernex rollouts promote`"
    return safe(text, lines=False)


def render_list(rows: list[dict[str, Any]]) -> RenderableType:
    table = Table("id", "group", "revision", "state", "progress", "devices", "updated")
    for r in rows:
        table.add_row(
            safe(r["id"]),
            safe(r.get("group") or "(fleet default)"),
            short(r.get("revision")),
            state_text(r["state"]),
            wave_progress(r),
            safe(r.get("devices", 0)),
            ago(r.get("updated_at")),
        )
    return table


def render_rollout(r: dict[str, Any]) -> RenderableType:
    facts = Table.grid(padding=(0, 2))
    facts.add_row("rollout", safe(r["id"]))
    facts.add_row("group", safe(r.get("group") or "(fleet default)"))
    reason = f": {safe(r['reason'])}" if r.get("reason") else ""
    facts.add_row("state", state_text(r["state"]) + reason)
    facts.add_row(
        "revision", f"{short(r.get('revision'))} (from {short(r.get('previous_revision'))})"
    )
    policy = r.get("policy") or {}
    facts.add_row(
        "policy",
        safe(
            f"waves {policy.get('waves')}, failure threshold {policy.get('failure_threshold')}%, "
            f"pause {policy.get('pause')}s, promotion {policy.get('promotion')}, "
            f"auto rollback {'on' if policy.get('auto_rollback') else 'off'}"
        ),
    )
    facts.add_row("progress", wave_progress(r))
    facts.add_row(
        "failures", safe(f"{r.get('failed', 0)} ({r.get('failures_allowed', 0)} allowed)")
    )
    waves = Table("wave", "share", "devices", "admitted", "healthy", "failed", "pending", "offline")
    for w in r.get("waves") or []:
        waves.add_row(
            safe(w["index"] + 1),
            safe(f"{w['percent']}%"),
            safe(w["size"]),
            "yes" if w["admitted"] else "no",
            safe(w["healthy"]),
            f"[red]{safe(w['failed'])}[/]" if w["failed"] else "0",
            safe(w["pending"]),
            safe(w["offline"]),
        )
    parts: list[RenderableType] = [facts, waves]
    devices = r.get("device_list") or []
    if devices:
        table = Table("device", "wave", "admitted", "serial", "reported", "phase", "online")
        for d in devices:
            table.add_row(
                safe(d["id"]),
                safe(d["wave"] + 1),
                "rolled back" if d.get("rolled_back") else ("yes" if d["admitted"] else "no"),
                safe(d.get("new_serial") or "-"),
                safe(d.get("reported_serial") or "-"),
                phase_text(d.get("phase")),
                "yes" if d.get("online") else "no",
            )
        parts.append(table)
    return Group(*parts)


@rollouts_app.command("list")
def list_rollouts(
    state: Annotated[
        str | None,
        typer.Option(help="Only this state: running, paused, halted, completed, aborted, ..."),
    ] = None,
    server: ServerOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """List rollouts, newest first.

    Example: kernex rollouts list --state running
    """
    with admin_session(server, token) as client:
        params = {"state": state} if state else {}
        rows = client.get("/v1/admin/rollouts", **params)["rollouts"]
    if as_json:
        print_json({"rollouts": rows})
        return
    console.print(render_list(rows), highlight=False)


@rollouts_app.command("show")
def show(
    rollout_id: RolloutId,
    server: ServerOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show one rollout: its policy, waves and every device's progress.

    Example: kernex rollouts show 7
    """
    with admin_session(server, token) as client:
        found = client.get(f"/v1/admin/rollouts/{rollout_id}")
    if as_json:
        print_json(found)
        return
    console.print(render_rollout(found), highlight=False)


def _act(verb: str, doc: str) -> None:
    def act(
        rollout_id: RolloutId,
        server: ServerOption = None,
        token: TokenOption = None,
        as_json: JsonOption = False,
    ) -> None:
        with admin_session(server, token) as client:
            found = client.post(f"/v1/admin/rollouts/{rollout_id}/{verb}")
        if as_json:
            print_json(found)
            return
        console.print(
            f"rollout {safe(found['id'])} is {state_text(found['state'])}: {wave_progress(found)}",
            highlight=False,
        )

    act.__doc__ = doc
    rollouts_app.command(verb)(act)


_act(
    "pause",
    "Pause a running rollout: no wave is promoted until it resumes (failures still halt).\n\n"
    "Example: kernex rollouts pause 7",
)
_act(
    "resume",
    "Resume a paused or halted rollout. Resuming a halt accepts its failures so far and\n"
    "serves the new state again to devices that were rolled back.\n\n"
    "Example: kernex rollouts resume 7",
)
_act(
    "promote",
    "Admit the next wave now (manual promotion, or skipping the pause).\n\n"
    "Example: kernex rollouts promote 7",
)
_act(
    "abort",
    "Abort a rollout: devices that took the new state get the previous one again;\n"
    "the others stay where they are until a new commit changes them.\n\n"
    "Example: kernex rollouts abort 7",
)


def register(app: typer.Typer) -> None:
    app.add_typer(rollouts_app, name="rollouts")
