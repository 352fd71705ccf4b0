"""A simulated device that answers each new desired serial with a status report, in a thread.

It stands in for an agent where a test needs to choose the outcome (healthy or failed);
the CI test runs the real agent."""

from __future__ import annotations

import threading
from typing import Any

import httpx
from serverkit import SimDevice


class Responder:
    """Polls the device's desired serial (admin API) and reports ``phase`` for each new one."""

    def __init__(
        self,
        base: str,
        admin_token: str,
        device: SimDevice,
        phase: str = "healthy",
        error: str | None = None,
    ) -> None:
        self.base = base
        self.admin_token = admin_token
        self.device = device
        self.phase = phase
        self.error = error
        self.reported: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Responder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        auth = {"Authorization": f"Bearer {self.admin_token}"}
        with httpx.Client(base_url=self.base, timeout=10) as client:
            while not self._stop.wait(0.1):
                shown: dict[str, Any] = client.get(
                    f"/v1/admin/devices/{self.device.device_id}", headers=auth
                ).json()
                desired = shown.get("desired_serial")
                if desired is None or desired in self.reported:
                    continue
                report = {"phase": self.phase, "serial": desired, "error": self.error}
                response = self.device.status(client, report)
                if response.status_code == 204:
                    self.reported.append(desired)
