"""Strings a device or the server supplies cannot drive the operator's terminal.

A device reports a status whose error and log tail hold Rich markup (`[/red]` crashed
`kernex devices show` with a traceback, `[link=...]` made links) and escape sequences (OSC
retitles the terminal, CSI clears it, C1 CSI, bidi overrides); a commit's validation
error quotes a key holding the same; an API token is named with markup. Every command
shows the text literally, without a control character, and exits normally.
"""

from __future__ import annotations

import json

from kit.cli import Kernex
from kit.server import RunningServer

MARKUP = "[/red][bold][link=https://evil.example]click[/link]"
HOSTILE = f"boom {MARKUP} \x1b]0;pwned\x07 \x1b[2J \x9b31m \u202eevil\x08\r done"
CONTROLS = ("\x1b", "\x07", "\x9b", "\u202e", "\x08", "\r")


def assert_inert(result: object, *, exit_code: int = 0) -> str:
    output: str = result.output  # type: ignore[attr-defined]
    assert result.exception is None or isinstance(result.exception, SystemExit), output  # type: ignore[attr-defined]
    assert result.exit_code == exit_code, output  # type: ignore[attr-defined]
    assert "Traceback" not in output
    for char in CONTROLS:
        assert char not in output, (char, output)
    return output


def test_device_strings_render_as_text_in_devices_list_and_show(
    kernex: Kernex, kx_server: RunningServer
) -> None:
    device = kx_server.enroll("edge-1", ring="canary")
    kx_server.report(
        device,
        phase="failed",
        serial=1,
        error=HOSTILE,
        log_tail=f"line one\n{HOSTILE}\n\tindented",
    )

    shown = assert_inert(kernex("devices", "show", "edge-1"))
    assert "[/red][bold][link=https://evil.example]click[/link]" in shown
    assert "pwned" in shown  # the text stays, only the controls go
    listed = assert_inert(kernex("devices", "list"))
    assert "edge-1" in listed
    as_json = json.loads(kernex("devices", "show", "edge-1", "--json").stdout)
    assert as_json["status"]["error"] == HOSTILE  # --json keeps the data exact


def test_the_server_refuses_status_fields_that_are_not_printable(
    kx_server: RunningServer,
) -> None:
    device = kx_server.enroll("edge-2")
    bad = [
        {"phase": "healthy", "bundles": {"app\x1b[2J": "1.0.0"}},
        {"phase": "healthy", "bundles": {"app": "1.0.0\x9b31m"}},
        {"phase": "healthy", "agent_version": "1.0\x1b]0;x\x07"},
        {"phase": "healthy", "revision": "abc\r"},
    ]
    with kx_server.http() as client:
        for report in bad:
            response = device.status(client, report)
            assert response.status_code == 422, (report, response.text)
            assert "printable" in response.json()["error"]


def test_status_shows_a_hostile_validation_error_as_text(
    kernex: Kernex, kx_server: RunningServer
) -> None:
    repo = kx_server.repo
    repo.write("kernex.yaml", f'apiVersion: kernex/v1\nname: x\n"{MARKUP}\\e[2J\\e]0;t\\a": 1\n')
    repo.commit("a key holding markup and escapes")
    assert kx_server.admin("POST", "/v1/admin/reconcile")["state"] == "invalid"
    status = assert_inert(kernex("status"), exit_code=1)
    assert "unknown key" in status
    assert "[/red]" in status


def test_audit_and_tokens_show_a_markup_name_as_text(
    kernex: Kernex, kx_server: RunningServer
) -> None:
    created = kernex("tokens", "create", "--name", "[/red]ci", "--role", "viewer")
    assert_inert(created)
    listed = assert_inert(kernex("tokens", "list"))
    assert "[/red]ci" in listed
    audit = assert_inert(kernex("audit"))
    assert "token.create" in audit


def test_an_error_message_quoting_markup_exits_cleanly(
    kernex: Kernex, kx_server: RunningServer
) -> None:
    result = kernex("devices", "show", "[bold]x")
    assert_inert(result, exit_code=1)
    assert "error: no device [bold]x" in result.output  # the server's message, verbatim


def test_alerts_list_names_the_server_toml_table_literally(kernex: Kernex) -> None:
    listed = assert_inert(kernex("alerts", "list"))
    assert "add [[alerts]] to server.toml" in listed  # not eaten as a markup tag
