"""The ``kernex`` console script's first step: check that the extras the command needs are
installed, and name the one to install instead of failing with a traceback.

The base install of ``kernex-fleet`` is the device agent (``kernex-agent``); the command
line needs the ``[cli]`` extra and ``kernex server``/``kernex demo`` the ``[server]`` extra.
This module imports only the standard library, so it runs from the base install.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence

DISTRIBUTION = "kernex-fleet"

# The top-level modules each extra brings, as pyproject.toml lists them.
EXTRA_MODULES: dict[str, tuple[str, ...]] = {
    "cli": ("typer", "rich", "ruamel"),
    "server": (
        "sqlalchemy",
        "alembic",
        "starlette",
        "uvicorn",
        "psycopg",
        "prometheus_client",
    ),
}
SERVER_NOUNS = ("server", "demo")  # commands that start a server in this process
HELP = ("-h", "--help")


def missing(extra: str) -> bool:
    return any(importlib.util.find_spec(name) is None for name in EXTRA_MODULES[extra])


def extra_of(module: str | None) -> str | None:
    """The extra that brings ``module`` (a dotted name), if any."""
    top = (module or "").split(".")[0]
    return next((extra for extra, names in EXTRA_MODULES.items() if top in names), None)


def needed_extra(argv: Sequence[str]) -> str | None:
    """The extra that ``kernex ARGV`` needs and that is not installed, if any."""
    if missing("cli"):
        return "cli"
    noun = next((arg for arg in argv if not arg.startswith("-")), None)
    if noun in SERVER_NOUNS and not any(arg in HELP for arg in argv) and missing("server"):
        return "server"
    return None


def message(extra: str, argv: Sequence[str]) -> str:
    what = "the kernex command line" if extra == "cli" else f"`kernex {argv[0]}`"
    line = (
        f"error: {what} needs the {extra} extra, which is not installed; "
        f"install it with: pip install '{DISTRIBUTION}[{extra}]'"
    )
    if extra == "cli":
        line += " (on a device, `kernex-agent` needs no extra)"
    return line


def main() -> None:
    argv = sys.argv[1:]
    extra = needed_extra(argv)
    if extra is not None:
        sys.stderr.write(message(extra, [a for a in argv if not a.startswith("-")]) + "\n")
        sys.exit(1)
    try:
        from kernex_cli.main import main as kernex

        kernex()
    except ModuleNotFoundError as exc:  # an extra partly installed, or removed since
        extra = extra_of(exc.name)
        if extra is None:
            raise
        sys.stderr.write(
            f"error: this command needs the {extra} extra ({exc.name} is missing); "
            f"install it with: pip install '{DISTRIBUTION}[{extra}]'\n"
        )
        sys.exit(1)
