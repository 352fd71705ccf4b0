"""``kernex agent enroll|run|status``: the device side, a thin layer over kernex_agent.

kernex_agent is imported inside the commands, so ``kernex --help`` stays fast.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from kernex_cli.output import EXIT_USAGE, console, fail, fail_from, print_json, safe
from kernex_core.errors import KernexError

if TYPE_CHECKING:
    from kernex_agent.enroll import EnrollResult
    from kernex_agent.simulate import BehaviourRule

agent_app = typer.Typer(
    name="agent", help="Run a device: enroll it, converge it, show its state.", no_args_is_help=True
)

DATA_DIR_HELP = "Agent data directory (default: $KERNEX_AGENT_DIR or /var/lib/kernex-agent)."


def _data_dir(value: Path | None) -> Path:
    from kernex_agent.config import default_data_dir

    return value or default_data_dir(os.environ)


def _labels(pairs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            fail(f"label {pair!r} is not key=value", hint="Example: --label site=berlin", code=2)
        out[key] = value
    return out


@agent_app.command("enroll")
def enroll_cmd(
    server: Annotated[
        str, typer.Option("--server", help="Server URL, e.g. https://kernex.example")
    ],
    token: Annotated[str | None, typer.Option("--token", help="Enrollment token.")] = None,
    wait_for_approval: Annotated[
        bool,
        typer.Option("--wait-for-approval", help="Without a token: wait until an admin accepts."),
    ] = False,
    device_id: Annotated[
        str | None, typer.Option("--device-id", help="Default: the host name.")
    ] = None,
    label: Annotated[
        list[str] | None,
        typer.Option("--label", metavar="KEY=VALUE", help="Device label key=value (repeatable)."),
    ] = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help=DATA_DIR_HELP)] = None,
    server_key_fingerprint: Annotated[
        str | None,
        typer.Option("--server-key-fingerprint", help="Expected SHA256:... of the manifest key."),
    ] = None,
    release_key: Annotated[
        list[Path] | None,
        typer.Option(
            "--release-key",
            metavar="PEM",
            help="Release public key (PEM) bundles must be signed by (repeatable).",
        ),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Make the device key, enroll with the server and pin its manifest key.

    Example: kernex agent enroll --server https://kx.example:8443 --token kxe_... --label ring=a
    """
    import httpx

    from kernex_agent.enroll import default_device_id, enroll

    if (token is None) == (not wait_for_approval):
        fail("give exactly one of --token or --wait-for-approval", code=EXIT_USAGE)
    labels = _labels(label or [])
    directory = _data_dir(data_dir)

    async def go() -> EnrollResult:
        async with httpx.AsyncClient() as http:
            return await enroll(
                http,
                server_url=server,
                data_dir=directory,
                device_id=device_id or default_device_id(),
                token=token,
                labels=labels,
                wait_for_approval=wait_for_approval,
                expected_fingerprint=server_key_fingerprint,
                release_key_files=release_key or [],
                clock=time.time,
                sleep=asyncio.sleep,
            )

    try:
        result = asyncio.run(go())
    except KernexError as exc:
        fail_from(exc)
    if json_out:
        print_json({**result.__dict__, "state": result.state.value, "data_dir": str(directory)})
        return
    console.print(
        f"enrolled [bold]{safe(result.device_id)}[/] ({result.state.value}) in {safe(directory)}"
    )
    console.print(f"device key:         {result.device_key_id}")
    console.print(f"server manifest key: {result.manifest_key_id}", highlight=False)
    if not result.fingerprint_checked:
        console.print(
            "[yellow]compare the server manifest key above with `kernex server info` "
            "(or pass --server-key-fingerprint)[/]"
        )
    if result.trust_mode == "manifest-only":
        console.print(
            "[yellow]no release keys pinned: bundles are trusted on the manifest "
            "signature alone (pass --release-key)[/]"
        )


@agent_app.command("run")
def run_cmd(
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help=DATA_DIR_HELP)] = None,
    once: bool = typer.Option(False, "--once", help="One cycle, then exit (1 if it failed)."),
) -> None:
    """Run the agent loop: poll, verify, install, health-check, report.

    Example: kernex agent run --data-dir /var/lib/kernex-agent
    """
    from kernex_agent.runner import run_agent, setup_logging

    setup_logging(os.environ)
    try:
        code = asyncio.run(run_agent(_data_dir(data_dir), once=once, env=dict(os.environ)))
    except KernexError as exc:
        fail_from(exc)
    raise typer.Exit(code)


@agent_app.command("status")
def status_cmd(
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help=DATA_DIR_HELP)] = None,
    json_out: bool = typer.Option(False, "--json", help="Print the state as JSON."),
) -> None:
    """Show what is installed, the last manifest, the last error and the journal.

    Example: kernex agent status --json
    """
    from kernex_agent.runner import agent_status

    try:
        data = agent_status(_data_dir(data_dir))
    except KernexError as exc:
        fail_from(exc)
    if json_out:
        print_json(data)
        return
    from rich.table import Table

    console.print(f"device [bold]{safe(data['device_id'])}[/] -> {safe(data['server_url'])}")
    note = f" ({data['trust_note']})" if data["trust_note"] else ""
    console.print(safe(f"trust: {data['trust_mode']}{note}"))
    table = Table("bundle", "version", "slot")
    for name, bundle in sorted(data["installed"].items()):
        table.add_row(safe(name), safe(bundle["version"]), safe(bundle["slot"]))
    console.print(table)
    last = data["last_manifest"] or {}
    console.print(
        safe(
            f"last manifest: serial {last.get('serial')} revision {last.get('revision')}"
            f" (applied serial {data['applied_serial']})"
        )
    )
    report = data["last_report"] or {}
    console.print(safe(f"last report: {report.get('phase')} at {report.get('reported_at')}"))
    if data["last_error"]:
        console.print(
            f"[red]last error[/] ({safe(data['last_error_at'])}): {safe(data['last_error'])}",
            highlight=False,
        )
    journal = data["journal"]
    console.print(
        safe(f"journal: {journal['step']} (serial {journal['serial']})")
        if journal
        else "journal: empty"
    )
    if data["queued_reports"]:
        console.print(f"queued reports: {safe(data['queued_reports'])}")


def _label_values(pairs: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key or not value:
            fail(
                f"label {pair!r} is not key=value[,value...]",
                hint="Example: --label ring=canary,stable (values are dealt in turn).",
                code=EXIT_USAGE,
            )
        out[key] = value.split(",")
    return out


def _rules(pairs: list[str]) -> list[BehaviourRule]:
    from kernex_agent.simdevice import BEHAVIOURS
    from kernex_agent.simulate import BehaviourRule

    rules = []
    for pair in pairs:
        label, sep, behaviour = pair.rpartition(":")
        key, eq, value = label.partition("=")
        if not sep or not eq or not key or behaviour not in BEHAVIOURS:
            fail(
                f"{pair!r} is not key=value:behaviour",
                hint=f"Example: --behaviour-label hw=rev-a:fail-health; behaviours: "
                f"{', '.join(BEHAVIOURS)}.",
                code=EXIT_USAGE,
            )
        rules.append(BehaviourRule(key, value, behaviour))
    return rules


SPREAD_FROM = 200  # simulated devices from which `agent simulate` uses every core


@agent_app.command("simulate")
def simulate_cmd(
    server: Annotated[str, typer.Option("--server", help="Server URL, e.g. http://127.0.0.1:8443")],
    enroll_token: Annotated[str, typer.Option("--enroll-token", help="Enrollment token.")],
    devices: Annotated[int, typer.Option("--devices", min=1, help="How many devices.")] = 10,
    label: Annotated[
        list[str] | None,
        typer.Option(
            "--label",
            metavar="KEY=VALUES",
            help="key=value, or key=v1,v2 dealt in turn (repeatable).",
        ),
    ] = None,
    behaviour: Annotated[
        str,
        typer.Option(
            "--behaviour", help="ok, fail-health, fail-install, hang, slow, or real (run hooks)."
        ),
    ] = "ok",
    behaviour_label: Annotated[
        list[str] | None,
        typer.Option(
            "--behaviour-label",
            metavar="KEY=VALUE:BEHAVIOUR",
            help="key=value:behaviour for matching devices (repeatable).",
        ),
    ] = None,
    root: Annotated[
        Path | None,
        typer.Option("--root", help="Where the devices' data dirs go (default: temp)."),
    ] = None,
    duration: Annotated[
        float | None, typer.Option("--duration", help="Stop after this many seconds [Ctrl-C].")
    ] = None,
    id_prefix: Annotated[str, typer.Option("--id-prefix", help="Device id prefix.")] = "sim",
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            min=1,
            help="Processes to spread the devices over, each with its own event loop "
            f"[default: 1 below {SPREAD_FROM} devices, else one per CPU core].",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run N simulated devices (the real agent code) in one or more processes, then report
    per device the time from each manifest change to healthy.

    Example: kernex agent simulate --server http://127.0.0.1:8443 --enroll-token kxe_...
    --devices 200 --label ring=canary,stable --behaviour-label ring=canary:fail-health
    """
    import logging
    import signal
    import tempfile

    from kernex_agent.simdevice import BEHAVIOURS
    from kernex_agent.simulate import SimFleet, SimSettings

    if behaviour not in BEHAVIOURS:
        fail(
            f"unknown behaviour {behaviour!r}",
            hint=f"Use one of {', '.join(BEHAVIOURS)}.",
            code=EXIT_USAGE,
        )
    logging.getLogger("kernex.agent").addHandler(logging.NullHandler())
    logging.getLogger("kernex.agent").propagate = False
    workdir = root or Path(tempfile.mkdtemp(prefix="kernex-sim-"))
    settings = SimSettings(
        server_url=server,
        enroll_token=enroll_token,
        devices=devices,
        root=workdir,
        labels=_label_values(label or []),
        behaviour=behaviour,
        rules=_rules(behaviour_label or []),
        id_prefix=id_prefix,
        workers=workers or (1 if devices < SPREAD_FROM else os.cpu_count() or 1),
    )

    async def go() -> SimFleet:
        fleet = SimFleet(settings)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await fleet.enroll_all()
            if not json_out:
                console.print(f"{devices} devices enrolled under {workdir}; running (Ctrl-C stops)")
            if duration is not None:
                loop.call_later(duration, stop.set)
            await fleet.run(stop)
        finally:
            await fleet.aclose()
        return fleet

    try:
        fleet = asyncio.run(go())
    except KernexError as exc:
        fail_from(exc)
    summary = fleet.summary()
    if json_out:
        print_json({"summary": summary.to_dict(), "devices": fleet.per_device()})
        return
    from rich.table import Table

    table = Table("device", "behaviour", "phase", "bundles", "manifest change -> healthy (s)")
    for row in fleet.per_device():
        bundles = ", ".join(f"{k}@{v}" for k, v in sorted(row["bundles"].items()))
        times = ", ".join(f"{t:.2f}" for t in row["convergences"]) or "-"
        table.add_row(row["device"], row["behaviour"], row["phase"], bundles, times)
    console.print(table)
    console.print(
        f"{summary.convergences} convergences: p50 {summary.p50:.2f} s, p90 {summary.p90:.2f} s,"
        f" p100 {summary.p100:.2f} s; phases {summary.phases}",
        highlight=False,
    )


def register(app: typer.Typer) -> None:
    app.add_typer(agent_app, name="agent")
