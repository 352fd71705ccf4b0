"""``kernex reconcile`` and ``kernex diff``: the live fleet, as the server runs it.

``reconcile`` asks the server for a pass now (instead of waiting for its poll) and waits
for it, as ``flux reconcile`` or ``argocd app sync`` do. ``diff`` compares what the server
has deployed, for the devices it knows, with HEAD of the local fleet repository, and lists
the devices not yet on their desired state (``argocd app diff``, ``terraform plan`` against
the live state).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from kernex_cli.client import AdminClient, ServerOption, TokenOption
from kernex_cli.output import EXIT_USAGE, console, err_console, fail, print_json, safe
from kernex_cli.views import JsonOption, admin_session, duration_option, parse_duration, short
from kernex_core.errors import KernexError

REFUSED = frozenset({"invalid", "unsigned"})
RETRY = frozenset({"fetching", "skipped"})  # the pass read nothing new yet: ask again
POLL_INTERVAL = 1.0  # seconds between reconcile requests while the server fetches


def trigger(client: AdminClient, *, force: bool, timeout: float) -> dict[str, Any]:
    """POST /v1/admin/reconcile until a pass has read a finished fetch (or ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        result: dict[str, Any] = client.request(
            "POST", "/v1/admin/reconcile", params={"force": "1" if force else None}
        )
        if not result.get("fetching") and result.get("state") not in RETRY:
            return result
        if time.monotonic() >= deadline:
            fail(
                f"the server's reconcile did not finish in {timeout:g} s "
                f"(it is {result.get('state')})",
                hint="Its fetch of the fleet repository may be slow or failing: see "
                "`kernex status` (git fetch), then try again with a longer --timeout.",
            )
        time.sleep(POLL_INTERVAL)


def _revision(client: AdminClient, commit: str | None) -> dict[str, Any] | None:
    if not commit:
        return None
    for rev in client.get("/v1/admin/revisions")["revisions"]:
        if rev.get("commit") == commit:
            return dict(rev)
    return None


def _print_errors(errors: list[dict[str, Any]]) -> None:
    for issue in errors:
        where = ":".join(str(issue[k]) for k in ("file", "line", "column") if issue.get(k))
        key = f" [{issue['key_path']}]" if issue.get("key_path") else ""
        err_console.print(
            f"{safe(where)}: [red]{safe(issue.get('message'))}[/]{safe(key)}",
            highlight=False,
            soft_wrap=True,
        )


def reconcile(
    force: Annotated[
        bool, typer.Option("--force", help="Run a full pass even if the head was seen before.")
    ] = False,
    timeout: Annotated[
        str,
        typer.Option(
            "--timeout", callback=duration_option, help="How long to wait for the server's fetch."
        ),
    ] = "2m",
    server: ServerOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Have the server fetch the fleet repository and reconcile now; wait and print the result.

    Exit 0 when the newest commit is deployed (or already was), 1 when the server refuses it
    (invalid or unsigned; its errors are listed) or cannot read its repository. Needs an
    operator token.

    Example: kernex reconcile
    """
    with admin_session(server, token) as client:
        result = trigger(client, force=force, timeout=float(parse_duration(timeout)))
        revision = _revision(client, result.get("commit"))
    state = str(result.get("state"))
    if state not in REFUSED and revision is not None and revision.get("state") in REFUSED:
        state = str(revision["state"])  # an unchanged head that was refused before
    errors = list(result.get("errors") or (revision or {}).get("errors") or [])
    commit = result.get("commit")
    if as_json:
        print_json({**result, "state": state, "errors": errors})
        if state in REFUSED or state == "no_source":
            raise typer.Exit(1)
        return
    if state == "no_source":
        fail(
            "the server has no fleet repository to reconcile",
            hint="Set `repo` in the server's server.toml (`kernex server init --repo ...`).",
        )
    if state in REFUSED:
        _print_errors(errors)
        fail(
            f"the server refused {short(commit)}: the commit is {state}",
            hint="Fix it and push again; the server keeps serving the last deployed revision "
            "(`kernex status`).",
        )
    if state == "deployed":
        console.print(
            f"[green]deployed[/] {short(commit)}: {result.get('devices_changed', 0)} device(s) "
            "got a new manifest",
            highlight=False,
        )
    else:
        console.print(
            f"up to date: {short(commit)} is the newest commit and was reconciled before "
            "(--force runs the pass again)",
            highlight=False,
        )
    admitted = result.get("admitted") or []
    if admitted:
        console.print(f"admitted by fingerprint: {safe(', '.join(admitted))}", highlight=False)


def diff(
    repo: Annotated[
        Path, typer.Option("--repo", "-C", help="The fleet repository (default: .).")
    ] = Path("."),
    head: Annotated[str, typer.Option("--head", help="Revision to compare to.")] = "HEAD",
    detailed_exitcode: Annotated[
        bool,
        typer.Option(
            "--detailed-exitcode",
            help="Exit 0 when the live fleet matches, 2 when it differs, 1 on error.",
        ),
    ] = False,
    server: ServerOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Compare the live fleet with the repository: the server's deployed revision against HEAD,
    for every device the server knows, then the devices not yet on their desired state.

    The deployed revision is read from the local repository, so fetch first when the server
    deploys a remote branch.

    Example: kernex diff --repo ./fleet --detailed-exitcode
    """
    from kernex_cli.fleet_cmds import fail_invalid
    from kernex_cli.inventory import Inventory, plan_devices
    from kernex_cli.plan_render import render_text
    from kernex_core.fleet import compute_plan, load_fleet
    from kernex_git import Repository, UnknownRevisionError, read_fleet_files

    with admin_session(server, token) as client:
        status = client.get("/v1/admin/status")
        listed = client.get("/v1/admin/devices")["devices"]
        where = client.connection.server
    deployed = (status.get("revision") or {}).get("deployed")
    accepted = [d for d in listed if d.get("state") == "accepted"]
    inventory = Inventory(
        where, {str(d["id"]): {str(k): str(v) for k, v in (d.get("labels") or {}).items()}
                for d in accepted}
    )  # fmt: skip
    try:
        fleet_repo = Repository.open(repo)
        head_sha = fleet_repo.resolve(head)
        try:
            live_sha = fleet_repo.resolve(deployed) if deployed else None
        except UnknownRevisionError:
            fail(
                f"the server deploys {short(deployed)}, which this repository does not have",
                hint="Fetch the branch the server deploys (`git fetch`), then try again.",
            )
        head_fleet = load_fleet(read_fleet_files(fleet_repo, head_sha))
        live_fleet = load_fleet(read_fleet_files(fleet_repo, live_sha)) if live_sha else None
        devices = plan_devices(inventory.devices, {}, live_fleet, head_fleet)
        plan = compute_plan(
            live_fleet.resolve(devices) if live_fleet else {}, head_fleet.resolve(devices)
        )
    except KernexError as exc:
        fail_invalid(exc)
    drift = [_drift(d) for d in accepted if d.get("deployment_pending")]
    differs = plan.has_changes or bool(drift)
    if as_json:
        print_json({"deployed": live_sha, "head": head_sha, **plan.to_dict(), "drift": drift})
    else:
        _render(plan, live_sha, head_sha, drift, render_text)
    if detailed_exitcode and differs:
        raise typer.Exit(EXIT_USAGE)


def _drift(device: dict[str, Any]) -> dict[str, Any]:
    status = device.get("status") or {}
    return {
        "device": device["id"],
        "desired_serial": device.get("desired_serial"),
        "reported_serial": device.get("reported_serial"),
        "phase": status.get("phase"),
        "running": status.get("bundles") or {},
        "online": bool(device.get("online")),
    }


def _render(
    plan: Any, live: str | None, head: str, drift: list[dict[str, Any]], render: Any
) -> None:
    from kernex_cli.devices_cmds import bundle_list
    from kernex_cli.views import phase_text

    console.print(
        f"live (deployed) {short(live)} against {short(head)}"
        + ("  [dim](the same commit)[/]" if live == head else ""),
        highlight=False,
    )
    render(plan, live, head, console)
    if not drift:
        console.print("Every device reports its desired state.", highlight=False)
        return
    table = Table("device", "phase", "reported", "desired", "running", "online",
                  title="not yet on their desired state")  # fmt: skip
    for d in drift:
        table.add_row(
            safe(d["device"]),
            phase_text(d["phase"]),
            safe(d["reported_serial"] if d["reported_serial"] is not None else "-"),
            safe(d["desired_serial"]),
            bundle_list(d["running"]) or "-",
            "yes" if d["online"] else "[dim]no[/]",
        )
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("reconcile")(reconcile)
    app.command("diff")(diff)
