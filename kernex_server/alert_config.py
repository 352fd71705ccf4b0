"""Alert receivers, declared as ``[[alerts]]`` tables in ``server.toml``.

Receivers live in the server's settings, not in the fleet repository's ``kernex.yaml``:
each one holds a secret (the HMAC key, and a Slack webhook URL is itself a credential)
that must not be committed to Git, and one of the things alerts report is the fleet
repository being broken (an invalid or unsigned commit), which must not depend on that
repository being readable. See docs/operations.md#alerts.

    [[alerts]]
    name = "ops"
    url = "https://alerts.example.com/kernex"
    secret = "..."           # generated, e.g. `openssl rand -hex 32`; never defaulted
    format = "generic"       # or "slack" (Slack-compatible incoming webhook)
    events = ["rollout.halted", "devices.failed"]   # optional; default: every kind
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from kernex_server.errors import ServerSetupError

ROLLOUT_HALTED = "rollout.halted"
RECONCILE_FAILED = "reconcile.failed"
COMMIT_REFUSED = "commit.refused"
DEVICES_FAILED = "devices.failed"
FLEET_OFFLINE = "fleet.offline"
TEST = "test"
KINDS = (ROLLOUT_HALTED, RECONCILE_FAILED, COMMIT_REFUSED, DEVICES_FAILED, FLEET_OFFLINE)
FORMATS = ("generic", "slack")
MIN_SECRET_CHARS = 32

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}\Z")
_FIELDS = {"name", "url", "secret", "format", "events"}


@dataclass(frozen=True)
class AlertReceiver:
    name: str
    url: str
    secret: str
    format: str = "generic"
    events: tuple[str, ...] = KINDS

    def wants(self, kind: str) -> bool:
        return kind == TEST or kind in self.events

    def __repr__(self) -> str:  # never print the secret or a URL's credentials
        return f"AlertReceiver(name={self.name!r}, format={self.format!r})"


def new_secret() -> str:
    return secrets.token_hex(32)


def parse_receivers(raw: Any) -> tuple[AlertReceiver, ...]:
    """``[[alerts]]`` tables (a list of mappings) as receivers; a clear error otherwise."""
    if not isinstance(raw, list | tuple) or not all(isinstance(t, Mapping) for t in raw):
        raise ServerSetupError(
            "setting 'alerts' must be a list of tables",
            hint="Write each receiver as an [[alerts]] table with name, url and secret.",
        )
    out: list[AlertReceiver] = []
    for table in raw:
        receiver = _receiver(table)
        if any(r.name == receiver.name for r in out):
            raise ServerSetupError(
                f"two alert receivers are named {receiver.name!r}", hint="Give each a name."
            )
        out.append(receiver)
    return tuple(out)


def _receiver(table: Mapping[str, Any]) -> AlertReceiver:
    name = table.get("name")
    where = f"alert receiver {name!r}" if isinstance(name, str) else "an [[alerts]] table"
    unknown = sorted(set(table) - _FIELDS)
    if unknown:
        raise ServerSetupError(
            f"{where}: unknown key(s) {', '.join(unknown)}",
            hint="Keys of [[alerts]]: name, url, secret, format, events. Settings outside "
            "the receivers go above the first [[alerts]] table in server.toml.",
        )
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ServerSetupError(
            f"{where} needs a name: lowercase letters, digits, '.', '_' or '-'",
            hint='For example: name = "ops".',
        )
    url = table.get("url")
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ServerSetupError(
            f"{where} needs an http(s) url",
            hint='For example: url = "https://hooks.example.com/x".',
        )
    secret = table.get("secret")
    if not isinstance(secret, str) or len(secret) < MIN_SECRET_CHARS:
        raise ServerSetupError(
            f"{where} needs a secret of at least {MIN_SECRET_CHARS} characters",
            hint=f'Add a fresh one, e.g. secret = "{new_secret()}", and give it to the '
            "receiver so it can check the Kernex-Signature header.",
        )
    fmt = table.get("format", "generic")
    if fmt not in FORMATS:
        raise ServerSetupError(
            f"{where}: format must be one of {', '.join(FORMATS)}, got {fmt!r}",
            hint='Use "slack" for Slack-compatible incoming webhooks.',
        )
    events = table.get("events", list(KINDS))
    if not isinstance(events, Sequence) or isinstance(events, str) or not events:
        raise ServerSetupError(
            f"{where}: events must be a non-empty list", hint=f"Kinds: {', '.join(KINDS)}."
        )
    bad = [e for e in events if e not in KINDS]
    if bad:
        raise ServerSetupError(
            f"{where}: unknown event kind(s) {', '.join(map(str, bad))}",
            hint=f"Kinds: {', '.join(KINDS)}.",
        )
    return AlertReceiver(name, url, secret, fmt, tuple(events))  # type: ignore[arg-type]
