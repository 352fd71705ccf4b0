"""``kernex devices labels accept|reject ID``: settle the labels a device proposed.

An admitted (or refused) device cannot change its own labels; when it re-enrolls with
other labels the server keeps them as ``proposed_labels`` (shown by
``kernex devices show``) until an admin accepts or rejects them. Both acts are audited.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from kernex_cli.client import ServerOption, TokenOption
from kernex_cli.output import console, print_json, safe
from kernex_cli.views import JsonOption, admin_session

labels_app = typer.Typer(
    help="Accept or reject the labels a device proposed when it re-enrolled.",
    no_args_is_help=True,
)

DeviceArg = Annotated[str, typer.Argument(metavar="ID", help="The device id.")]


def label_text(labels: dict[str, Any] | None, *, empty: str = "-") -> str:
    """Labels as ``k=v, ...``, ready for markup."""
    return safe(", ".join(f"{k}={v}" for k, v in sorted((labels or {}).items())) or empty)


def _settle(
    verb: str, device_id: str, server: str | None, token: str | None, as_json: bool
) -> None:
    with admin_session(server, token) as client:
        answer = client.post(f"/v1/admin/devices/{device_id}/labels/{verb}")
    if as_json:
        print_json(answer)
        return
    console.print(
        f"device [bold]{safe(answer['id'])}[/] has labels {label_text(answer['labels'])}",
        highlight=False,
    )


@labels_app.command("accept")
def accept(
    device_id: DeviceArg,
    server: ServerOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Make the labels the device proposed its labels; its manifest follows at once.

    Example: kernex devices labels accept edge-001
    """
    _settle("accept", device_id, server, token, as_json)


@labels_app.command("reject")
def reject(
    device_id: DeviceArg,
    server: ServerOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Drop the labels the device proposed; it keeps the labels it has.

    Example: kernex devices labels reject edge-001
    """
    _settle("reject", device_id, server, token, as_json)
