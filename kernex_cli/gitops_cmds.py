"""GitOps edits: ``kernex deploy``, ``kernex rollback``, ``kernex config set|unset``.

Each edit is one commit in the fleet repository with a message that says what changed,
made only after the edited revision validates, and followed by the plan of what it changes
for each device. ``--dry-run`` prints the plan and writes nothing; ``--push`` pushes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from kernex_cli.client import ServerOption, TokenOption
from kernex_cli.fleet_edit import parse_scalar, set_value, unset_value
from kernex_cli.inventory import Inventory, plan_devices
from kernex_cli.output import EXIT_USAGE, console, fail, fail_from, print_json, safe
from kernex_core.errors import KernexError
from kernex_git import Repository, read_fleet_files

BUNDLE_REF_RE = re.compile(
    r"^(?P<name>[a-z0-9][a-z0-9._-]*)@(?P<version>[A-Za-z0-9][A-Za-z0-9.+_-]*)$"
)

RepoOption = Annotated[
    Path, typer.Option("--repo", "-C", help="The fleet repository (default: current directory).")
]
GroupOption = Annotated[
    str | None, typer.Option("--group", "-g", help="Act on this group (groups/G.yaml).")
]
DeviceOption = Annotated[
    str | None, typer.Option("--device", "-d", help="Act on this device (devices/D.yaml).")
]
PushOption = Annotated[bool, typer.Option("--push", help="Push the commit to 'origin'.")]
DryRunOption = Annotated[bool, typer.Option("--dry-run", help="Print the plan; change nothing.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]
WaitOption = Annotated[
    bool,
    typer.Option(
        "--wait",
        help="After the commit, have the server reconcile it and wait until the devices it "
        "changes are healthy (exit 1 if any fails or on timeout).",
    ),
]
TimeoutOption = Annotated[
    str, typer.Option("--timeout", help="How long --wait waits, e.g. 90s, 10m, 1h.")
]
NewOption = Annotated[
    bool,
    typer.Option(
        "--new", help="Create devices/D.yaml for a device that has no file yet (else refused)."
    ),
]


@dataclass(frozen=True)
class Scope:
    kind: str  # "group" or "device"
    name: str

    @property
    def path(self) -> str:
        return f"{self.kind}s/{self.name}.yaml"

    def __str__(self) -> str:
        return f"{self.kind} {self.name}"


def _scope(group: str | None, device: str | None) -> Scope:
    if (group is None) == (device is None):
        fail("give exactly one of --group or --device", code=EXIT_USAGE)
    return Scope("group", group) if group is not None else Scope("device", device or "")


@dataclass(frozen=True)
class EditOutcome:
    base: str
    commit: str | None
    changed: bool  # the edit changes the file (a plan may still list no device: see below)
    plan: Any  # kernex_core.fleet.Plan over the enrolled devices and the repository's
    inventory: Inventory = field(default_factory=Inventory)


def apply_edit(
    repo: Repository,
    scope: Scope,
    new_text: str | None,
    message: str,
    *,
    dry_run: bool,
    push: bool,
    inventory: Inventory | None = None,
) -> EditOutcome:
    """Validate the edited revision, plan it against HEAD, then write, commit and push.

    The plan covers the server's enrolled devices (``inventory``) and the devices the
    repository lists; a change the plan shows no device for is still committed.
    """
    from kernex_core.fleet import compute_plan, load_fleet

    inventory = inventory or Inventory()

    base_sha = repo.head()
    base_files = read_fleet_files(repo, base_sha)
    head_files = dict(base_files)
    if new_text is None:
        head_files.pop(scope.path, None)
    else:
        head_files[scope.path] = new_text.encode("utf-8")
    base_fleet = load_fleet(base_files)
    head_fleet = load_fleet(head_files)  # FleetInvalidError: nothing is written
    devices = plan_devices(inventory.devices, {}, base_fleet, head_fleet)
    plan = compute_plan(base_fleet.resolve(devices), head_fleet.resolve(devices))
    old = base_files.get(scope.path)
    changed = (None if new_text is None else new_text.encode("utf-8")) != old
    if dry_run or not changed:
        return EditOutcome(base_sha, None, changed, plan, inventory)
    target = repo.path / scope.path
    if new_text is None:
        target.unlink(missing_ok=True)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(new_text, encoding="utf-8")
    commit = repo.commit([scope.path], message)
    if push:
        repo.push()
    return EditOutcome(base_sha, commit, changed, plan, inventory)


def _current_text(repo: Repository, scope: Scope, *, create: bool) -> str:
    if repo.is_dirty(scope.path):
        fail(
            f"{scope.path} has uncommitted changes",
            hint="Commit or stash them first, so this command commits only its own edit.",
        )
    raw = repo.show("HEAD", scope.path)
    if raw is None:
        if create and scope.kind == "device":
            return ""
        if scope.kind == "device":
            fail(
                f"device {scope.name} has no file ({scope.path} is not in HEAD)",
                hint="Check the name (`ls devices/`, `kernex devices list`); to give the "
                "device its first file, pass --new.",
            )
        fail(
            f"{scope} does not exist ({scope.path} is not in HEAD)",
            hint=f"List them with `ls {scope.kind}s/`, or add {scope.path} first.",
        )
    return raw.decode("utf-8")


def _report(
    outcome: EditOutcome,
    what: str,
    *,
    as_json: bool,
    dry_run: bool,
    extra: dict[str, Any] | None = None,
) -> None:
    from kernex_cli.plan_render import render_text

    if as_json:
        print_json(
            {
                "base": outcome.base,
                "commit": outcome.commit,
                "changed": outcome.changed,
                "dry_run": dry_run,
                "plan": outcome.plan.to_dict(),
                "inventory": outcome.inventory.to_json(),
                **(extra or {}),
            }
        )
        return
    if not outcome.changed:
        console.print(f"[bold]{what}[/]: already so, no commit made.", highlight=False)
        return
    if outcome.commit:
        console.print(f"[green]committed[/] {outcome.commit[:12]}  {what}", highlight=False)
    else:
        console.print(f"[yellow]dry run[/]: {what} (nothing written)", highlight=False)
    render_text(outcome.plan, outcome.base, outcome.commit or "edit", console)
    console.print(f"[dim]{safe(outcome.inventory.note())}[/]", highlight=False)


@dataclass(frozen=True)
class WaitSpec:
    """What --wait needs: the admin connection and how long to wait."""

    server: str | None
    token: str | None
    timeout: str

    @classmethod
    def from_options(
        cls, wait: bool, timeout: str, server: str | None, token: str | None, dry_run: bool
    ) -> WaitSpec | None:
        from kernex_cli.views import parse_duration

        if not wait:
            return None
        if dry_run:
            fail("--wait cannot be used with --dry-run", code=EXIT_USAGE)
        try:
            parse_duration(timeout)
        except typer.BadParameter as exc:
            fail(f"--timeout: {exc.message}", code=EXIT_USAGE)
        return cls(server, token, timeout)


def _run_edit(
    repo_dir: Path,
    scope: Scope,
    edit: Any,
    message: str,
    *,
    dry_run: bool,
    push: bool,
    as_json: bool,
    wait: WaitSpec | None = None,
    server: str | None = None,
    token: str | None = None,
    create: bool = False,
) -> None:
    from kernex_cli.client import ClientError

    client = None
    try:
        repo = Repository.open(repo_dir)
        text = _current_text(repo, scope, create=create)
        new_text = edit(text)
        if wait is not None:  # check rights and snapshot before committing: lose nothing
            from kernex_cli.client import connect, require_role
            from kernex_cli.converge import snapshot

            client = connect(wait.server, wait.token)
            require_role(client, "operator", "--wait (it asks the server to reconcile)")
            baseline = snapshot(client)
            inventory = Inventory.fetch(client)
        else:
            inventory = _enrolled(server, token)
        outcome = apply_edit(
            repo, scope, new_text, message, dry_run=dry_run, push=push, inventory=inventory
        )
    except KernexError as exc:
        from kernex_cli.fleet_cmds import fail_invalid

        _close(client)
        fail_invalid(exc)
    if client is None or wait is None or outcome.commit is None:
        _report(outcome, message, as_json=as_json, dry_run=dry_run)
        return
    from kernex_cli.wait_render import run_wait

    try:
        with client:
            if not as_json:
                _report(outcome, message, as_json=False, dry_run=dry_run)
            code = run_wait(client, repo, outcome.commit, baseline, wait.timeout, as_json=as_json)
    except ClientError as exc:
        fail_from(exc)
    if as_json:
        _report(outcome, message, as_json=True, dry_run=dry_run, extra=code.to_json)
    raise typer.Exit(code.exit_code)


def _enrolled(server: str | None, token: str | None) -> Inventory:
    """The configured server's devices for the plan; a server that cannot be read is
    noted and the edit goes ahead (the commit, not the plan, is what deploys)."""
    from kernex_cli.client import ClientError
    from kernex_cli.output import err_console

    try:
        return Inventory.configured(server, token)
    except ClientError as exc:
        err_console.print(
            f"[yellow]warning[/]: the plan lists only the repository's devices: cannot read "
            f"the server's devices: {safe(exc.message)}",
            highlight=False,
            soft_wrap=True,
        )
        return Inventory()


def _close(client: Any) -> None:
    if client is not None:
        client.close()


def deploy(
    ref: Annotated[str, typer.Argument(metavar="BUNDLE@VERSION", help="e.g. hello@1.1.0")],
    group: GroupOption = None,
    device: DeviceOption = None,
    repo: RepoOption = Path("."),
    push: PushOption = False,
    dry_run: DryRunOption = False,
    as_json: JsonOption = False,
    wait: WaitOption = False,
    timeout: TimeoutOption = "10m",
    server: ServerOption = None,
    token: TokenOption = None,
    new: NewOption = False,
) -> None:
    """Set a bundle version for a group or a device, as a commit.

    The version must be in the bundle catalog (bundles/NAME.yaml). The rest of the YAML
    file, comments included, is kept as it was. With --wait, the server reconciles the
    commit at once and the command waits until the devices it changes run it.

    Example: kernex deploy hello@1.1.0 --group canary --push --wait --timeout 15m
    """
    m = BUNDLE_REF_RE.match(ref)
    if not m:
        fail(
            f"{ref!r} is not BUNDLE@VERSION",
            hint="For example: kernex deploy hello@1.1.0 --group canary",
            code=EXIT_USAGE,
        )
    scope = _scope(group, device)
    waiting = WaitSpec.from_options(wait, timeout, server, token, dry_run)
    name, version = m.group("name"), m.group("version")
    try:
        _check_catalog(Repository.open(repo), name, version)
    except KernexError as exc:
        from kernex_cli.fleet_cmds import fail_invalid

        fail_invalid(exc)
    _run_edit(
        repo,
        scope,
        lambda text: set_value(text, ["bundles", name], version, source=scope.path),
        f"deploy {name}@{version} to {scope}",
        dry_run=dry_run,
        push=push,
        as_json=as_json,
        wait=waiting,
        server=server,
        token=token,
        create=new,
    )


def _check_catalog(repo: Repository, name: str, version: str) -> None:
    from kernex_core.fleet import load_fleet

    fleet = load_fleet(read_fleet_files(repo, "HEAD"))
    versions = fleet.catalog.get(name)
    if versions is None:
        known = ", ".join(sorted(fleet.catalog)) or "none"
        raise KernexError(
            f"bundle {name!r} is not in the catalog (bundles: {known})",
            hint="Publish it first: `kernex bundle push FILE`.",
        )
    if version not in versions:
        raise KernexError(
            f"{name} {version} is not in the catalog (versions: {', '.join(versions)})",
            hint="Publish it first: `kernex bundle push FILE`.",
        )


def rollback(
    group: GroupOption = None,
    device: DeviceOption = None,
    to: str | None = typer.Option(
        None,
        "--to",
        help="Revision to restore (default: the one before the last change to "
        "the group or device file).",
    ),
    repo: RepoOption = Path("."),
    push: PushOption = False,
    dry_run: DryRunOption = False,
    as_json: JsonOption = False,
    wait: WaitOption = False,
    timeout: TimeoutOption = "10m",
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """Restore a group's or device's desired state from an earlier revision, as a new commit.

    History is never rewritten: the old state comes back as a new commit, which gets a
    higher manifest serial on every device it touches. --wait works as for deploy.

    Example: kernex rollback --group canary --push --wait
    """
    scope = _scope(group, device)
    waiting = WaitSpec.from_options(wait, timeout, server, token, dry_run)
    try:
        fleet_repo = Repository.open(repo)
        if to is None:
            last = fleet_repo.last_change(scope.path)
            if last is None:
                fail(
                    f"{scope.path} has no history to roll back",
                    hint="Name a revision with --to REV.",
                )
            rev = fleet_repo.resolve(f"{last}^") if _has_parent(fleet_repo, last) else None
        else:
            rev = fleet_repo.resolve(to)
        old = fleet_repo.show(rev, scope.path) if rev else None
    except KernexError as exc:
        fail_from(exc)
    label = rev[:12] if rev else "its creation"
    _run_edit(
        repo,
        scope,
        lambda _text: old.decode("utf-8") if old is not None else None,
        f"rollback {scope} to {label}",
        dry_run=dry_run,
        push=push,
        as_json=as_json,
        wait=waiting,
        server=server,
        token=token,
        create=True,  # the file's history names the device: it may come back
    )


def _has_parent(repo: Repository, commit: str) -> bool:
    return len(repo.git("rev-list", "--parents", "-n", "1", commit).split()) > 1


config_app = typer.Typer(
    help="Set or unset configuration keys for a group or a device.", no_args_is_help=True
)


@config_app.command("set")
def config_set(
    assignment: str = typer.Argument(
        ..., metavar="KEY=VALUE", help="Dotted key and a YAML value, e.g. log.level=debug"
    ),
    group: GroupOption = None,
    device: DeviceOption = None,
    repo: RepoOption = Path("."),
    push: PushOption = False,
    dry_run: DryRunOption = False,
    as_json: JsonOption = False,
    wait: WaitOption = False,
    timeout: TimeoutOption = "10m",
    server: ServerOption = None,
    token: TokenOption = None,
    new: NewOption = False,
) -> None:
    """Set a configuration key, as a commit.

    Example: kernex config set telemetry.interval=30 --group lab
    """
    key, sep, raw = assignment.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        fail(
            f"{assignment!r} is not KEY=VALUE", hint="For example: log.level=debug", code=EXIT_USAGE
        )
    scope = _scope(group, device)
    value = parse_scalar(raw)
    path = ["config", *key.split(".")]
    _run_edit(
        repo,
        scope,
        lambda text: set_value(text, path, value, source=scope.path),
        f"config set {key}={raw} for {scope}",
        dry_run=dry_run,
        push=push,
        as_json=as_json,
        wait=WaitSpec.from_options(wait, timeout, server, token, dry_run),
        server=server,
        token=token,
        create=new,
    )


@config_app.command("unset")
def config_unset(
    key: Annotated[str, typer.Argument(metavar="KEY", help="Dotted key, e.g. log.level")],
    group: GroupOption = None,
    device: DeviceOption = None,
    repo: RepoOption = Path("."),
    push: PushOption = False,
    dry_run: DryRunOption = False,
    as_json: JsonOption = False,
    wait: WaitOption = False,
    timeout: TimeoutOption = "10m",
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """Remove a configuration key, as a commit.

    Example: kernex config unset log.level --device dev-0001
    """
    scope = _scope(group, device)
    path = ["config", *key.split(".")]
    _run_edit(
        repo,
        scope,
        lambda text: unset_value(text, path, source=scope.path),
        f"config unset {key} for {scope}",
        dry_run=dry_run,
        push=push,
        as_json=as_json,
        wait=WaitSpec.from_options(wait, timeout, server, token, dry_run),
        server=server,
        token=token,
    )


def register(app: typer.Typer) -> None:
    app.command("deploy")(deploy)
    app.command("rollback")(rollback)
    app.add_typer(config_app, name="config")
