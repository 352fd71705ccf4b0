"""Rendering shared by every command: Rich for people, JSON for machines, one error style.

Strings from a server or a device (names, labels, status errors, log tails, audit
entries, validation messages) are shown through ``safe``: Rich markup in them is escaped
(``[/red]`` is text, not a tag that crashes the command or a ``[link=...]``), and control
characters are dropped (an ESC sequence cannot retitle or clear the terminal). The
consoles drop control characters from every string they render as a second line of
defence; markup can only be escaped where the text is put together, hence ``safe``.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from kernex_core.errors import KernexError

# C0 controls but tab and newline, DEL, C1 controls, and the bidirectional and
# zero-width format characters that can make text read other than it is.
_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]")


def clean(value: object, *, lines: bool = True) -> str:
    """``value`` as text without control characters; with ``lines=False`` newlines and
    tabs become spaces too (for one-line cells)."""
    text = _CONTROLS.sub("", str(value))
    return text if lines else " ".join(text.split("\n")).replace("\t", " ")


def safe(value: object, *, lines: bool = True) -> str:
    """``value`` ready to be put into Rich markup: controls dropped, markup escaped."""
    return escape(clean(value, lines=lines))


class _Console(Console):
    def render_str(self, text: str, **kwargs: Any) -> Text:
        return super().render_str(_CONTROLS.sub("", text), **kwargs)


console = _Console(emoji=False)
err_console = _Console(stderr=True, emoji=False)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")


def fail(message: str, *, hint: str | None = None, code: int = EXIT_FAILURE) -> NoReturn:
    """Print an error (and what to do next) on stderr and exit with ``code``."""
    err_console.print(f"[bold red]error:[/] {safe(message)}", highlight=False, soft_wrap=True)
    if hint:
        err_console.print(f"[dim]hint:[/] {safe(hint)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def fail_from(exc: KernexError, *, code: int = EXIT_FAILURE) -> NoReturn:
    fail(exc.message, hint=exc.hint, code=code)
