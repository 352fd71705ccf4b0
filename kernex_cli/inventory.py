"""The devices a plan covers: the server's enrolled devices (their labels from enrollment)
when a server is configured, plus an ``--inventory`` file, plus every device file.

``kernex plan`` and the GitOps edits (``deploy``, ``rollback``, ``config set|unset``) plan
with it, so a change shows what it does to the devices that really run the fleet, as the
server will resolve them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kernex_cli.client import AdminClient, Connection, NotConfiguredError

if TYPE_CHECKING:
    from kernex_core.fleet import Fleet

Labels = dict[str, dict[str, str]]  # device id -> labels
OFFLINE_HINT = "Pass --offline to plan for the devices the repository lists only."


@dataclass(frozen=True)
class Inventory:
    """Enrolled devices and where they came from (``server`` is None: none configured)."""

    server: str | None = None
    devices: Labels = field(default_factory=dict)

    @classmethod
    def fetch(cls, client: AdminClient) -> Inventory:
        """The accepted devices and their labels (``GET /v1/admin/devices``)."""
        listed = client.get("/v1/admin/devices", state="accepted")["devices"]
        devices = {
            str(d["id"]): {str(k): str(v) for k, v in (d.get("labels") or {}).items()}
            for d in listed
            if d.get("state") == "accepted"
        }
        return cls(client.connection.server, devices)

    @classmethod
    def configured(cls, server: str | None, token: str | None) -> Inventory:
        """The configured server's devices; empty when no server is configured. A server
        that is configured but cannot be read raises ``ClientError`` (with a hint)."""
        try:
            connection = Connection.resolve(server, token)
        except NotConfiguredError:
            return cls()
        with AdminClient(connection) as client:
            return cls.fetch(client)

    def to_json(self) -> dict[str, object] | None:
        return None if self.server is None else {"server": self.server, "devices": len(self)}

    def __len__(self) -> int:
        return len(self.devices)

    def note(self) -> str:
        """One line saying which devices the plan covers, for people."""
        if self.server is None:
            return (
                "no server configured: enrolled devices without a device file are not in "
                "this plan (`kernex login`, or --inventory FILE)"
            )
        return f"with {len(self)} enrolled device(s) from {self.server}"


def plan_devices(enrolled: Labels, extra: Labels, base: Fleet | None, head: Fleet) -> Labels:
    """Devices to plan for: the enrolled ones, then ``extra`` (an inventory file; it wins
    for a device both name), plus every device file of either revision.

    A device whose file is deleted keeps the labels its file had, as its best guess of
    what it reports itself, so the plan shows what the deletion does to it.
    """
    devices = {device_id: dict(labels) for device_id, labels in enrolled.items()}
    devices.update({device_id: dict(labels) for device_id, labels in extra.items()})
    for fleet in (base, head):
        if fleet is None:
            continue
        for device_id, spec in fleet.devices.items():
            devices.setdefault(device_id, {}).update(spec.labels)
    return devices
