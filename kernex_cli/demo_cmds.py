"""``kernex demo``: render the demo's story live (Rich) or as plain lines (no terminal)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.live import Live
from rich.table import Table
from rich.text import Text

from kernex_cli.output import console, fail, fail_from, safe

if TYPE_CHECKING:
    from kernex_agent.simdevice import DeviceRecord
    from kernex_cli.demo import DemoResult

PHASES = ("enrolling", "enrolled", "idle", "downloading", "installing", "healthy", "failed",
          "rolled_back")  # fmt: skip


class PlainNarrator:
    """One line per step, and the fleet's phases whenever they change (at most every 0.5 s)."""

    def __init__(self) -> None:
        self.step_no = 0
        self._last = ""
        self._pending = ""
        self._at = 0.0

    def step(self, what: str, command: str | None = None) -> None:
        self.step_no += 1
        if self._pending and self._pending != self._last:
            self._print_fleet(self._pending)
        console.print(f"[{self.step_no}] {what}", highlight=False, soft_wrap=True)
        if command:
            console.print(f"    $ {command}", highlight=False, soft_wrap=True)

    def note(self, text: str) -> None:
        console.print(f"    {text}", highlight=False, soft_wrap=True)

    def fleet(self, records: Sequence[DeviceRecord]) -> None:
        self._pending = fleet_line(records)
        if self._pending != self._last and time.monotonic() - self._at >= 0.5:
            self._print_fleet(self._pending)

    def _print_fleet(self, line: str) -> None:
        console.print(f"    fleet: {line}", highlight=False, soft_wrap=True)
        self._last, self._at = line, time.monotonic()


class LiveNarrator(PlainNarrator):
    """Steps scroll above a live table of devices per phase and per hello version."""

    def __init__(self) -> None:
        super().__init__()
        self.live = Live(Text("starting..."), console=console, refresh_per_second=8)

    def step(self, what: str, command: str | None = None) -> None:
        self.step_no += 1
        self.live.console.print(f"[bold green]✓[/] {what}", highlight=False)
        if command:
            self.live.console.print(f"    [dim]$[/] [cyan]{command}[/]", highlight=False)

    def note(self, text: str) -> None:
        self.live.console.print(f"    [dim]{safe(text)}[/]", highlight=False)

    def fleet(self, records: Sequence[DeviceRecord]) -> None:
        from kernex_cli.demo import phase_counts, version_counts

        phases, versions = phase_counts(records), version_counts(records)
        table = Table(title=f"{len(records)} devices", title_justify="left")
        for phase in PHASES:
            if phases.get(phase):
                table.add_column(phase, justify="right")
        for version in sorted(versions):
            table.add_column(f"hello {version}", justify="right", style="cyan")
        table.add_row(
            *[str(phases[p]) for p in PHASES if phases.get(p)],
            *[str(versions[v]) for v in sorted(versions)],
        )
        self.live.update(table)


def fleet_line(records: Sequence[DeviceRecord]) -> str:
    from kernex_cli.demo import phase_counts, version_counts

    phases, versions = phase_counts(records), version_counts(records)
    parts = [f"{phases[p]} {p}" for p in PHASES if phases.get(p)]
    parts += [f"{versions[v]} on hello {v}" for v in sorted(versions) if v != "-"]
    return ", ".join(parts)


def _summary(result: DemoResult, keep: bool) -> None:
    console.print(
        "\nThe story ran as told. Commit -> last device converged (or the rollout halted):",
        highlight=False,
    )
    for timing in result.timings:
        console.print(f"  {timing.what:<22} {timing.seconds:6.2f} s", highlight=False)
    if not keep:
        console.print(
            "Run `kernex demo --keep` to leave it running and look at it in the dashboard.",
            highlight=False,
        )
    if keep:
        server, token = result.server_url, result.admin_token
        console.print(
            f"\nDashboard: {server}/ui/  (log in as {result.dashboard_user}, "
            f"password {result.dashboard_password})",
            highlight=False,
            soft_wrap=True,
        )
        console.print(
            f"\nStill running (Ctrl-C stops it). Workspace: {result.workspace}\n"
            f"  export KERNEX_SERVER={server} KERNEX_TOKEN={token}\n"
            "  kernex status\n"
            "  kernex devices list\n"
            "  kernex rollouts show 1\n"
            f"  kernex plan --repo {result.workspace / 'fleet'}\n"
            f"  git -C {result.workspace / 'fleet'} log --oneline",
            highlight=False,
            soft_wrap=True,
        )


def demo(
    devices: Annotated[int, typer.Option("--devices", min=1, help="Simulated devices.")] = 50,
    workspace: Annotated[
        Path | None,
        typer.Option(
            "--workspace", help="Folder for the repo, server and devices (default: temp)."
        ),
    ] = None,
    keep: Annotated[
        bool,
        typer.Option(
            "--keep", help="Keep the workspace and leave everything running until Ctrl-C."
        ),
    ] = False,
) -> None:
    """Run the whole Kernex story on this machine: fleet repo, server, devices, a deploy, a
    failed health check rolled back by the devices, a rollback commit, and a staged rollout
    whose failing first wave halts it before the rest of the fleet gets the release.

    Loopback only; nothing to set up. Exits 0 when the story ran as told.

    Example: kernex demo --devices 50
    """
    from kernex_cli.demo import Demo, DemoOptions
    from kernex_core.errors import KernexError

    logging.getLogger("kernex.agent").addHandler(logging.NullHandler())
    logging.getLogger("kernex.agent").propagate = False
    if workspace is not None and workspace.exists() and any(workspace.iterdir()):
        fail(f"{workspace} is not empty", hint="Name a new or empty directory for --workspace.")
    narrator: PlainNarrator = LiveNarrator() if console.is_terminal else PlainNarrator()
    options = DemoOptions(devices=devices, workspace=workspace, keep=keep)
    holder: list[DemoResult] = []

    def shown(result: DemoResult) -> None:
        holder.append(result)
        _summary(result, keep)

    runner = Demo(options, narrator, on_story_done=shown if keep else None)
    try:
        if isinstance(narrator, LiveNarrator):
            with narrator.live:
                result = asyncio.run(runner.run())
        else:
            result = asyncio.run(runner.run())
    except KeyboardInterrupt:
        if holder:
            console.print("stopped; the workspace stays in " + str(holder[0].workspace))
            raise typer.Exit(0) from None
        fail("interrupted; every process the demo started was stopped", code=130)
    except KernexError as exc:
        fail_from(exc)
    if not keep:
        _summary(result, keep)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
