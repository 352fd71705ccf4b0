"""Helpers the server-view commands share: an admin session that turns client errors into
clean exits, duration and time parsing, and small Rich renderings."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer

from kernex_cli.client import AdminClient, ClientError, connect
from kernex_cli.output import fail_from, safe
from kernex_core import formats
from kernex_core.timefmt import parse_time

JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]


@contextmanager
def admin_session(server: str | None, token: str | None) -> Iterator[AdminClient]:
    """An admin client; any ClientError (unreachable, 401, 403, ...) exits 1 with its hint."""
    try:
        with connect(server, token) as client:
            yield client
    except ClientError as exc:
        fail_from(exc)


def parse_duration(text: str) -> int:
    """A positive duration (``90``, ``30s``, ``1h30m``, ``7d``; the grammar is
    ``kernex_core.formats``) to seconds; BadParameter (exit 2) if not."""
    try:
        seconds = formats.parse_duration(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    if seconds <= 0:
        raise typer.BadParameter(f"{text!r} is not a positive duration")
    return seconds


def duration_option(value: str | None) -> str | None:
    """Typer callback: check a duration early so a typo is a usage error (exit 2)."""
    if value is not None:
        parse_duration(value)
    return value


def ago(stamp: str | None, now: float | None = None) -> str:
    """An RFC 3339 time as "3m ago" / "in 2h" for tables; "-" when absent."""
    if not stamp:
        return "-"
    try:
        then = parse_time(stamp)
    except ValueError:
        return safe(stamp, lines=False)
    delta = int((time.time() if now is None else now) - then)
    future = delta < 0
    delta = abs(delta)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if delta >= size:
            text = f"{delta // size}{unit}"
            break
    else:
        text = f"{delta}s"
    return f"in {text}" if future else f"{text} ago"


PHASE_STYLE = {
    "healthy": "green",
    "failed": "red",
    "rolled_back": "red",
    "downloading": "cyan",
    "installing": "cyan",
}


def out_of_sync(device: dict[str, Any]) -> bool:
    """Not on the deployed revision's state: its report lags the manifest it is served,
    or a rollout holds it on another one (``held_back``: waiting for its wave, halted)."""
    return bool(device.get("deployment_pending") or device.get("held_back"))


def phase_text(phase: str | None) -> str:
    if not phase:
        return "[dim]-[/]"
    style = PHASE_STYLE.get(phase)
    return f"[{style}]{phase}[/]" if style else safe(phase, lines=False)


def short(value: Any, width: int = 12) -> str:
    """The first ``width`` characters, ready for markup (a revision, an id)."""
    return "-" if value is None else safe(str(value)[:width], lines=False)
