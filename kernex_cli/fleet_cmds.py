"""`kernex init`, `kernex validate`, `kernex plan`: the fleet repository from the command line."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from kernex_cli import output
from kernex_cli.client import ClientError, ServerOption, TokenOption
from kernex_cli.fleet_source import FleetSourceError, init_fleet_repo, read_worktree_files
from kernex_cli.inventory import OFFLINE_HINT, Inventory, plan_devices
from kernex_cli.output import safe
from kernex_cli.plan_render import render_markdown, render_text
from kernex_core.errors import FleetInvalidError, KernexError, ValidationIssue
from kernex_core.fleet import DesiredState, Fleet, compute_plan, load_fleet
from kernex_git import Repository, read_fleet_files

RepoOption = Annotated[Path, typer.Option("--repo", "-C", help="The fleet repository.")]


class PlanFormat(StrEnum):
    text = "text"
    json = "json"
    markdown = "markdown"


def print_issues(issues: list[ValidationIssue], *, to_stderr: bool = False) -> None:
    console = output.err_console if to_stderr else output.console
    for issue in issues:
        key = f" [dim]\\[{safe(issue.key_path)}][/]" if issue.key_path else ""
        console.print(
            f"[bold]{safe(issue.location())}[/]: [red]{safe(issue.message)}[/]{key}",
            highlight=False,
            soft_wrap=True,
        )
        if issue.hint:
            console.print(f"    [dim]hint:[/] {safe(issue.hint)}", highlight=False, soft_wrap=True)
    count = len(issues)
    console.print(
        f"[bold red]{count} error{'s' if count != 1 else ''}[/]", highlight=False, soft_wrap=True
    )


def fail_invalid(exc: KernexError) -> NoReturn:
    """Exit 1 with ``exc``; an invalid fleet lists its errors (file:line:column) first."""
    if isinstance(exc, FleetInvalidError):
        print_issues(exc.issues, to_stderr=True)
    output.fail_from(exc)


def init(
    directory: Annotated[Path, typer.Argument(help="New directory for the fleet repository.")],
) -> None:
    """Make a new fleet repository from the example, as a Git repository with one commit.

    Example: kernex init ./fleet
    """
    try:
        sha = init_fleet_repo(directory)
    except KernexError as exc:
        output.fail_from(exc)
    output.console.print(
        f"Created fleet repository [bold]{safe(str(directory))}[/] (commit {sha[:12]}).\n"
        f"Next: edit it, then `kernex validate --repo {safe(str(directory))}`.",
        highlight=False,
        soft_wrap=True,
    )


def validate(
    repo: RepoOption = Path("."),
    rev: Annotated[
        str | None,
        typer.Option(help="Validate this commit's Git objects instead of the working tree."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Check the fleet repository; print every error as file:line:column.

    Exit 0 when valid, 1 when not. Without --rev the working tree is checked, so you can
    validate before you commit.

    Example: kernex validate --repo ./fleet --rev HEAD
    """
    revision: str | None = None
    try:
        if rev is None:
            files = read_worktree_files(repo)
        else:
            fleet_repo = Repository.open(repo)
            revision = fleet_repo.resolve(rev)
            files = read_fleet_files(fleet_repo, revision)
        fleet = load_fleet(files)
    except FleetInvalidError as exc:
        if as_json:
            output.print_json(
                {"valid": False, "revision": revision, "issues": [i.to_dict() for i in exc.issues]}
            )
        else:
            print_issues(exc.issues)
        raise typer.Exit(output.EXIT_FAILURE) from None
    except KernexError as exc:
        output.fail_from(exc)
    if as_json:
        output.print_json({"valid": True, "revision": revision, "issues": [], **_counts(fleet)})
        return
    c = _counts(fleet)
    where = f" at {revision[:12]}" if revision else ""
    output.console.print(
        f"[green]✓[/] fleet{where} is valid: {c['groups']} groups, {c['bundles']} bundles "
        f"({c['bundle_versions']} versions), {c['devices']} device files",
        highlight=False,
        soft_wrap=True,
    )


def _counts(fleet: Fleet) -> dict[str, int]:
    return {
        "groups": len(fleet.groups),
        "bundles": len(fleet.catalog),
        "bundle_versions": sum(len(v) for v in fleet.catalog.values()),
        "devices": len(fleet.devices),
    }


def plan(
    repo: RepoOption = Path("."),
    base: Annotated[
        str | None, typer.Option(help="Revision to compare from (default: the head's parent).")
    ] = None,
    head: Annotated[str, typer.Option(help="Revision to compare to.")] = "HEAD",
    fmt: Annotated[PlanFormat, typer.Option("--format", "-f", help="Output format.")] = (
        PlanFormat.text
    ),
    inventory: Annotated[
        Path | None,
        typer.Option(
            help="JSON file {device id: {label: value}} of more devices to include (it wins "
            "over the server's labels for a device both name)."
        ),
    ] = None,
    offline: Annotated[
        bool,
        typer.Option(
            "--offline", help="Do not ask the server for its enrolled devices, even if one is set."
        ),
    ] = False,
    detailed_exitcode: Annotated[
        bool,
        typer.Option(
            "--detailed-exitcode", help="Exit 0 without changes, 2 with changes, 1 on error."
        ),
    ] = False,
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """Show what the head revision changes for each device, compared with the base.

    Both revisions are read from Git objects; HEAD and its parent by default. The devices
    are those the repository lists, plus the server's enrolled devices (with their labels)
    when a server is configured (--server/--token, KERNEX_SERVER/KERNEX_TOKEN or `kernex
    login`), plus those of --inventory.

    Example: kernex plan --base origin/main --format markdown --detailed-exitcode
    """
    try:
        fleet_repo = Repository.open(repo)
        head_sha = fleet_repo.resolve(head)
        base_sha = fleet_repo.resolve(base) if base is not None else fleet_repo.parent(head_sha)
        head_fleet = _load_revision(fleet_repo, head_sha, "head")
        base_fleet = _load_revision(fleet_repo, base_sha, "base") if base_sha else None
        reported = _read_inventory(inventory) if inventory else {}
        enrolled = Inventory() if offline else _enrolled(server, token)
        devices = plan_devices(enrolled.devices, reported, base_fleet, head_fleet)
        head_states = head_fleet.resolve(devices)
        base_states: dict[str, DesiredState] = base_fleet.resolve(devices) if base_fleet else {}
    except FleetInvalidError as exc:
        print_issues(exc.issues, to_stderr=True)
        output.fail(exc.message, hint=exc.hint)
    except KernexError as exc:
        output.fail_from(exc)
    result = compute_plan(base_states, head_states)
    if fmt is PlanFormat.json:
        output.print_json(
            {
                "base": base_sha,
                "head": head_sha,
                "inventory": enrolled.to_json(),
                **result.to_dict(),
            }
        )
    elif fmt is PlanFormat.markdown:
        typer.echo(render_markdown(result, base_sha, head_sha), nl=False)
    else:
        render_text(result, base_sha, head_sha, output.console)
        if not offline:
            output.console.print(f"[dim]{safe(enrolled.note())}[/]", highlight=False)
    if detailed_exitcode and result.has_changes:
        raise typer.Exit(2)


def _load_revision(repo: Repository, sha: str, which: str) -> Fleet:
    try:
        return load_fleet(read_fleet_files(repo, sha))
    except FleetInvalidError as exc:
        exc.message = f"the {which} revision {sha[:12]} is invalid: {exc.message}"
        if which == "base":
            exc.hint = "Compare against a valid revision with --base."
        raise


def _read_inventory(path: Path) -> dict[str, dict[str, str]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FleetSourceError(
            f"cannot read inventory {path}: {exc}",
            hint='Write a JSON object: {"device-id": {"label": "value"}}.',
        ) from exc
    if not isinstance(data, dict) or not all(
        isinstance(labels, dict) and all(isinstance(v, str) for v in labels.values())
        for labels in data.values()
    ):
        raise FleetSourceError(
            f"inventory {path} is not a mapping of device ids to labels",
            hint='Write a JSON object: {"device-id": {"label": "value"}}.',
        )
    return data


def _enrolled(server: str | None, token: str | None) -> Inventory:
    try:
        return Inventory.configured(server, token)
    except ClientError as exc:
        exc.message = f"cannot read the server's devices: {exc.message}"
        exc.hint = f"{exc.hint} {OFFLINE_HINT}" if exc.hint else OFFLINE_HINT
        raise


def register(app: typer.Typer) -> None:
    app.command("init")(init)
    app.command("validate")(validate)
    app.command("plan")(plan)
