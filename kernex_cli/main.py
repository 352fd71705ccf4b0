"""Entry point of the ``kernex`` console script.

Each noun lives in its own module with a ``register(app)`` function; modules import the
heavy packages (server, agent) inside their commands, so ``kernex --help`` stays fast.
"""

from __future__ import annotations

import errno
import importlib
from typing import Any

import typer
from typer.core import TyperGroup

from kernex_core import __version__

COMMAND_MODULES = (
    "fleet_cmds",
    "gitops_cmds",
    "keys_cmds",
    "client",
    "server_cmds",
    "agent_cmds",
    "bundle_cmds",
    "demo_cmds",
    "status_cmds",
    "devices_cmds",
    "enroll_tokens_cmds",
    "tokens_cmds",
    "audit_cmds",
    "rollouts_cmds",
    "live_cmds",
    "alerts_cmds",
    "users_cmds",
)


class KernexGroup(TyperGroup):
    """The root command: a file-system error no command turned into its own message still
    ends as one ``error:`` line with a hint, never a traceback (docs/cli.md)."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except OSError as exc:
            if exc.errno == errno.EPIPE:
                raise
            from kernex_cli.output import fail

            where = f" {exc.filename}" if exc.filename else ""
            fail(
                f"cannot use{where}: {exc.strerror or exc}",
                hint="Check the path: the folders above it must exist as directories you "
                "may write to, and a file to read must be a file, not a directory.",
            )


app = typer.Typer(
    cls=KernexGroup,
    rich_markup_mode=None,
    name="kernex",
    help="GitOps for device fleets: desired state in Git, signed manifests, safe installs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"kernex {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """GitOps for device fleets."""


for _name in COMMAND_MODULES:
    try:
        _module = importlib.import_module(f"kernex_cli.{_name}")
    except ModuleNotFoundError as _exc:  # a noun not built yet in this checkout
        if _exc.name != f"kernex_cli.{_name}":
            raise
        continue
    _module.register(app)


def main() -> None:
    app()
