"""Agent settings and the data directory's layout.

The settings are written once by ``kernex agent enroll`` to ``agent.json``; the
environment is read only at the edge (``default_data_dir``) and can be handed in as a dict.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from kernex_agent.errors import AgentStateError
from kernex_core.bundle import MAX_MEMBERS, MAX_UNPACKED_BYTES, ExtractLimits

DEFAULT_DATA_DIR = "/var/lib/kernex-agent"
DATA_DIR_ENV = "KERNEX_AGENT_DIR"
CRASH_AT_ENV = "KERNEX_AGENT_CRASH_AT"  # test hook: SIGKILL self right after this journal step


def default_data_dir(env: Mapping[str, str]) -> Path:
    return Path(env.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR)


@dataclass(frozen=True)
class AgentConfig:
    server_url: str
    device_id: str
    data_dir: Path
    poll_wait: int = 30  # seconds the server may hold a manifest long poll
    request_timeout: float = 30.0  # seconds for a request, on top of the long-poll wait
    read_timeout: float = 60.0  # seconds without a byte during a bundle download
    download_min_rate: int = 16 * 1024  # bytes/s; a download's deadline is size / rate + read
    max_bundle_bytes: int = 4 * 1024**3  # bytes: larger declared bundles are refused
    keep_slots: int = 2  # slots kept per bundle: current and the one before (rollback)
    max_queued_reports: int = 200  # reports kept while the server is unreachable
    backoff_base: float = 1.0  # seconds: first retry delay after a failed cycle
    backoff_cap: float = 300.0  # seconds: longest delay between failed cycles
    retry_failed_base: float = 60.0  # seconds before a failed serial is tried again (doubles)
    retry_failed_cap: float = 3600.0  # seconds: longest wait before retrying a failed serial
    min_cycle_interval: float = 1.0  # seconds between cycles that return at once
    max_unpacked_bytes: int = MAX_UNPACKED_BYTES  # bytes of file content a bundle may unpack to
    max_members: int = MAX_MEMBERS  # files, directories and links in one bundle

    def __post_init__(self) -> None:
        for name in ("max_unpacked_bytes", "max_members", "max_bundle_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise AgentStateError(
                    f"agent config: {name} must be a positive integer, not {value!r}",
                    hint=f"Fix {name} in agent.json (docs/agent.md lists the settings).",
                )

    def extract_limits(self) -> ExtractLimits:
        return ExtractLimits(
            max_members=self.max_members, max_unpacked_bytes=self.max_unpacked_bytes
        )

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["data_dir"] = str(self.data_dir)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], data_dir: Path) -> AgentConfig:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known and k != "data_dir"}
        try:
            return cls(data_dir=Path(data_dir), **values)
        except TypeError as exc:
            raise AgentStateError(
                f"agent config is incomplete: {exc}",
                hint="Run `kernex-agent enroll` again.",
            ) from exc

    def with_overrides(self, **changes: Any) -> AgentConfig:
        return replace(self, **changes)


class Layout:
    """Where everything lives under the data directory (see docs/agent.md)."""

    def __init__(self, data_dir: Path) -> None:
        self.root = Path(data_dir)
        self.config = self.root / "agent.json"  # AgentConfig, written at enrollment
        self.key = self.root / "device.key"  # device private key, 0600
        self.state = self.root / "state.json"  # trust anchors, highest serial, what is installed
        self.journal = self.root / "journal.json"  # the current/last install transaction
        self.resolved_config = self.root / "config.json"  # the manifest's config, for bundles
        self.previous_config = self.root / "config.prev.json"  # kept during a transaction
        self.status = self.root / "status.json"  # last report and error, for `agent status`
        self.reports = self.root / "reports"  # queued status reports, oldest first
        self.staging = self.root / "staging"  # downloads (*.part while incomplete)
        self.bundles = self.root / "bundles"

    def bundle_dir(self, name: str) -> Path:
        return self.bundles / name

    def slots(self, name: str) -> Path:
        return self.bundles / name / "slots"

    def slot(self, name: str, slot: str) -> Path:
        return self.bundles / name / "slots" / slot

    def current(self, name: str) -> Path:
        return self.bundles / name / "current"

    def staged_config(self) -> Path:
        return self.staging / "config.json"


def load_config(data_dir: Path) -> AgentConfig:
    # Absolute: hooks run with their slot as working directory, so a relative
    # `--data-dir ../device` would name nothing there.
    data_dir = Path(data_dir).absolute()
    layout = Layout(data_dir)
    try:
        data = json.loads(layout.config.read_text())
    except FileNotFoundError as exc:
        raise AgentStateError(
            f"{data_dir} holds no enrolled agent (no agent.json)",
            hint="Run `kernex-agent enroll --server URL --token T` first, or pass --data-dir.",
        ) from exc
    except (OSError, ValueError) as exc:
        raise AgentStateError(
            f"cannot read {layout.config}: {exc}",
            hint="Check --data-dir: it must be the directory `kernex-agent enroll` wrote.",
        ) from exc
    if not isinstance(data, dict):
        raise AgentStateError(f"{layout.config} is not a JSON object")
    return AgentConfig.from_dict(data, Path(data_dir))
