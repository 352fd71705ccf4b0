"""How ``--wait`` looks: a live line on a terminal, plain lines otherwise, and the failures.

With ``--json`` the progress goes to stderr, so stdout holds one JSON document.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table

from kernex_cli.client import AdminClient
from kernex_cli.converge import Convergence, Waiter, WaitError, WaitResult
from kernex_cli.output import console, err_console, safe
from kernex_cli.rollouts_cmds import wave_progress
from kernex_cli.views import parse_duration
from kernex_git import Repository


@dataclass
class WaitOutcome:
    exit_code: int
    to_json: dict[str, Any] = field(default_factory=dict)


def _line(stage: str, state: Convergence | None, commit: str) -> str:
    if stage == "revision" or state is None:
        return f"waiting for the server to deploy {safe(commit[:12])}"
    text = f"{len(state.converged)}/{state.total} converged"
    if state.failed:
        text += f", [red]{len(state.failed)} failed[/]"
    if state.pending:
        text += f", {len(state.pending)} pending"
    for r in state.rollouts:
        text += f"; rollout {safe(r['id'])} {safe(r['state'])}, {wave_progress(dict(r))}"
    return text


class Progress:
    """A Rich live status on a terminal; otherwise one plain line per change."""

    def __init__(self, out: Console, commit: str) -> None:
        self.out = out
        self.commit = commit
        self.last = ""
        self.status: Any = None
        if out.is_terminal:
            self.status = out.status("", spinner="dots")
            self.status.start()

    def __call__(self, stage: str, state: Convergence | None) -> None:
        line = _line(stage, state, self.commit)
        if line == self.last:
            return
        self.last = line
        if self.status is not None:
            self.status.update(line)
        else:
            self.out.print(line, highlight=False)

    def stop(self) -> None:
        if self.status is not None:
            self.status.stop()
            self.out.print(self.last, highlight=False)


def run_wait(
    client: AdminClient,
    repo: Repository,
    commit: str,
    baseline: Mapping[str, int | None],
    timeout: str,
    *,
    as_json: bool,
) -> WaitOutcome:
    out = err_console if as_json else console
    progress = Progress(out, commit)
    waiter = Waiter(client, repo.is_ancestor, float(parse_duration(timeout)), progress)
    try:
        result = waiter.wait(commit, baseline)
    except WaitError as exc:
        progress.stop()
        _render_refusal(exc, out)
        return WaitOutcome(
            1,
            {"wait": {"ok": False, "error": exc.message, "hint": exc.hint, "errors": exc.errors}},
        )
    progress.stop()
    _render_result(result, out)
    return WaitOutcome(0 if result.ok else 1, {"wait": result.to_dict()})


def _render_refusal(exc: WaitError, out: Console) -> None:
    out.print(f"[bold red]error:[/] {safe(exc.message)}", highlight=False)
    for issue in exc.errors:
        where = ":".join(str(issue[k]) for k in ("file", "line") if issue.get(k))
        key = f" {issue['key_path']}" if issue.get("key_path") else ""
        out.print(f"  [red]{safe(where + key)}[/] {safe(issue.get('message'))}", highlight=False)
    if exc.hint:
        out.print(f"[dim]hint:[/] {safe(exc.hint)}", highlight=False)


def _render_result(result: WaitResult, out: Console) -> None:
    state = result.convergence
    if state.total == 0:
        out.print(
            f"deployed {safe(result.deployed[:12])}; no device's desired state changed",
            highlight=False,
        )
        if not state.halted:
            return
    if state.failed:
        table = Table("device", "phase", "serial", "error", title="failed devices")
        for p in state.failed:
            table.add_row(
                safe(p.device_id),
                f"[red]{safe(p.phase)}[/]",
                safe(p.reported_serial),
                safe(p.error or ""),
            )
        out.print(table)
    if result.timed_out and state.pending:
        table = Table("device", "phase", "reported", "desired", "online", title="still pending")
        for p in state.pending:
            table.add_row(
                safe(p.device_id),
                safe(p.phase or "-"),
                safe(p.reported_serial if p.reported_serial is not None else "-"),
                safe(p.desired_serial),
                "yes" if p.online else "[dim]no[/]",
            )
        out.print(table)
    for r in state.halted:
        then = (
            f"it holds its devices: {safe(result.deployed[:12])} leaves the version it "
            "released as it was (resume or abort it, or change that version)"
            if r.get("held")
            else "later waves keep the previous state"
        )
        out.print(
            f"[bold red]rollout {safe(r['id'])} ({safe(r.get('group') or 'fleet default')}) "
            f"{safe(r['state'])}:[/] {safe(r.get('reason') or '')}; {then}",
            highlight=False,
        )
    if result.ok:
        out.print(
            f"[green]all {state.total} device(s) healthy[/] at {safe(result.deployed[:12])}",
            highlight=False,
        )
    elif result.timed_out:
        out.print(
            f"[bold red]error:[/] timed out: {len(state.pending)} of {state.total} device(s) "
            f"still pending, {len(state.failed)} failed",
            highlight=False,
        )
    else:
        out.print(
            f"[bold red]error:[/] {len(state.failed)} of {state.total} device(s) failed"
            + (f", {len(state.halted)} rollout(s) stopped" if state.halted else ""),
            highlight=False,
        )
