"""``kernex devices list|show|accept|reject|revoke|labels``: the devices the server knows.

Filters go to the server (``GET /v1/admin/devices?state=&phase=&online=&label=``) and are
applied again to its answer, so the table is right even against a server that ignores one.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from kernex_cli.client import ServerOption, TokenOption
from kernex_cli.labels_cmds import label_text, labels_app
from kernex_cli.output import EXIT_USAGE, console, fail, print_json, safe
from kernex_cli.views import JsonOption, admin_session, ago, phase_text, short
from kernex_cli.views import out_of_sync as is_out_of_sync

devices_app = typer.Typer(
    help="List, show, accept, reject and revoke devices; settle proposed labels.",
    no_args_is_help=True,
)

STATES = ("pending", "accepted", "rejected", "revoked")


def _labels(pairs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            fail(f"label {pair!r} is not key=value", hint="Example: --label site=berlin", code=2)
        out[key] = value
    return out


def matches(
    device: dict[str, Any],
    *,
    state: str | None,
    phase: str | None,
    online: bool | None,
    labels: dict[str, str],
    out_of_sync: bool,
) -> bool:
    status = device.get("status") or {}
    return (
        (state is None or device.get("state") == state)
        and (phase is None or status.get("phase") == phase)
        and (online is None or bool(device.get("online")) == online)
        and all((device.get("labels") or {}).get(k) == v for k, v in labels.items())
        and (not out_of_sync or is_out_of_sync(device))
    )


@devices_app.command("list")
def list_devices(
    state: Annotated[
        str | None, typer.Option("--state", help="pending, accepted, rejected or revoked.")
    ] = None,
    phase: Annotated[
        str | None,
        typer.Option("--phase", help="Last reported phase, e.g. healthy, failed, rolled_back."),
    ] = None,
    online: Annotated[
        bool | None,
        typer.Option("--online/--offline", help="Only devices seen recently / not seen."),
    ] = None,
    label: Annotated[
        list[str] | None,
        typer.Option("--label", metavar="KEY=VALUE", help="key=value a device must have (repeat)."),
    ] = None,
    out_of_sync: Annotated[
        bool, typer.Option("--out-of-sync", help="Only devices not yet at their desired serial.")
    ] = False,
    server: ServerOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """List devices with their state, phase and serials.

    Example: kernex devices list --state accepted --offline --label site=berlin
    """
    if state is not None and state not in STATES:
        fail(f"--state must be one of {', '.join(STATES)}", code=EXIT_USAGE)
    labels = _labels(label or [])
    params: dict[str, Any] = {
        "state": state,
        "phase": phase,
        "online": None if online is None else str(online).lower(),
        "label": [f"{k}={v}" for k, v in labels.items()] or None,
        "out_of_sync": "true" if out_of_sync else None,
    }
    with admin_session(server, token) as client:
        answer = client.get("/v1/admin/devices", **params)
    devices = [
        d
        for d in answer["devices"]
        if matches(
            d, state=state, phase=phase, online=online, labels=labels, out_of_sync=out_of_sync
        )
    ]
    if as_json:
        print_json({"devices": devices})
        return
    if not devices:
        console.print("no devices match", highlight=False)
        return
    table = Table("device", "state", "phase", "running", "online", "serial", "labels", "last seen")
    for d in devices:
        status = d.get("status") or {}
        serial = safe(f"{d.get('reported_serial') or '-'}/{d.get('desired_serial') or '-'}")
        if is_out_of_sync(d):
            serial = f"[yellow]{serial}[/]"
        table.add_row(
            safe(d["id"]),
            safe(d["state"]),
            phase_text(status.get("phase")),
            bundle_list(status.get("bundles") or {}) or "-",
            "[green]yes[/]" if d.get("online") else "[dim]no[/]",
            serial,
            label_text(d.get("labels"), empty=""),
            ago(d.get("last_seen")),
        )
    console.print(table)
    console.print(f"{len(devices)} device(s); serial is reported/desired", style="dim")


@devices_app.command("show")
def show_device(
    device_id: Annotated[str, typer.Argument(metavar="ID", help="The device id.")],
    server: ServerOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show one device: identity, desired and reported state, status history, deployments.

    Example: kernex devices show edge-001
    """
    with admin_session(server, token) as client:
        device = client.get(f"/v1/admin/devices/{device_id}")
    if as_json:
        print_json(device)
        return
    _render_device(device)


def _render_device(d: dict[str, Any]) -> None:
    status = d.get("status") or {}
    facts = Table.grid(padding=(0, 2))
    facts.add_row("device", f"[bold]{safe(d['id'])}[/]")
    facts.add_row("state", safe(f"{d['state']} (admitted by {d.get('admitted_by') or '-'})"))
    facts.add_row(
        "online", f"{'yes' if d.get('online') else 'no'}, last seen {ago(d.get('last_seen'))}"
    )
    facts.add_row("key", safe(f"{d.get('algorithm')} {d.get('fingerprint')}"))
    facts.add_row("labels", label_text(d.get("labels")))
    if d.get("proposed_labels") is not None:
        facts.add_row(
            "proposed",
            f"[yellow]{label_text(d['proposed_labels'])}[/] "
            f"(`kernex devices labels accept|reject {safe(d['id'])}`)",
        )
    facts.add_row("agent", safe(d.get("agent_version") or "-"))
    facts.add_row(
        "desired",
        f"serial {safe(d.get('desired_serial') or '-')} at {short(d.get('desired_revision'))}",
    )
    facts.add_row(
        "reported",
        f"serial {safe(d.get('reported_serial') or '-')}, {phase_text(status.get('phase'))}"
        + ("  [yellow](out of sync)[/]" if d.get("deployment_pending") else "")
        + ("  [yellow](held back by a rollout)[/]" if d.get("held_back") else ""),
    )
    facts.add_row("running", bundle_list(status.get("bundles") or {}) or "-")
    if status.get("error"):
        facts.add_row("error", f"[red]{safe(status['error'])}[/]")
    if status.get("log_tail"):
        facts.add_row("log tail", safe(status["log_tail"]))
    console.print(facts, highlight=False)
    history = d.get("status_history") or []
    if history:
        table = Table("received", "phase", "serial", "bundles", "error", title="status history")
        for s in history[:20]:
            bundles = s.get("bundles") or {}
            table.add_row(
                ago(s.get("received_at")),
                phase_text(s.get("phase")),
                safe(s.get("serial")),
                bundle_list(bundles),
                safe(s.get("error") or ""),
            )
        console.print(table)
    deployments = d.get("deployments") or []
    if deployments:
        table = Table("serial", "revision", "bundles", "created", title="deployments")
        for dep in deployments[:20]:
            table.add_row(
                safe(dep.get("serial")),
                short(dep.get("revision")),
                bundle_list(dep.get("bundles") or {}),
                ago(dep.get("created_at")),
            )
        console.print(table)


def bundle_list(bundles: dict[str, Any]) -> str:
    def version(v: Any) -> str:
        return str(v.get("version")) if isinstance(v, dict) else str(v)

    return safe(", ".join(f"{k}@{version(v)}" for k, v in sorted(bundles.items())), lines=False)


def _transition(
    verb: str, device_id: str, server: str | None, token: str | None, as_json: bool
) -> None:
    with admin_session(server, token) as client:
        answer = client.post(f"/v1/admin/devices/{device_id}/{verb}")
    if as_json:
        print_json(answer)
        return
    console.print(
        f"device [bold]{safe(answer['id'])}[/] is now {safe(answer['state'])}", highlight=False
    )


@devices_app.command("accept")
def accept(
    device_id: Annotated[str, typer.Argument(metavar="ID", help="The device id.")],
    server: ServerOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Admit a pending (or rejected) device; it gets its manifest at once.

    Example: kernex devices accept edge-001
    """
    _transition("accept", device_id, server, token, as_json)


@devices_app.command("reject")
def reject(
    device_id: Annotated[str, typer.Argument(metavar="ID", help="The device id.")],
    server: ServerOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Refuse a pending device (it may be accepted later).

    Example: kernex devices reject edge-unknown
    """
    _transition("reject", device_id, server, token, as_json)


@devices_app.command("revoke")
def revoke(
    device_id: Annotated[str, typer.Argument(metavar="ID", help="The device id.")],
    server: ServerOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Revoke a device for good: the server stops serving it at once (final).

    Example: kernex devices revoke edge-stolen-7
    """
    _transition("revoke", device_id, server, token, as_json)


def register(app: typer.Typer) -> None:
    devices_app.add_typer(labels_app, name="labels")
    app.add_typer(devices_app, name="devices")
