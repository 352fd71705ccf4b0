"""Server settings: a typed dataclass, read from ``<data dir>/server.toml``.

The environment is read once, at the edge (``from_environ``), and only for
``KERNEX_DATA_DIR`` and ``KERNEX_DATABASE_URL``; tests build settings from a dict with
``Settings.from_mapping``. The only secrets here are ``webhook_secret`` (shared with the
Git host; ``kernex server init`` generates it and keeps ``server.toml`` mode 0600) and the
optional ``metrics_token``; the manifest key is a file in the data directory and admin
tokens are stored as hashes in the database.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kernex_server.alert_config import AlertReceiver, parse_receivers
from kernex_server.errors import ServerSetupError

SETTINGS_FILE = "server.toml"
MANIFEST_KEY_FILE = "keys/manifest.key"
DEFAULT_DATA_DIR = "kernex-data"


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    repo: str = ""  # fleet repository: a local path or a URL (cloned into the data dir)
    branch: str = "main"
    database_url: str = ""  # empty: SQLite file kernex.db in the data dir
    database_schema: str = ""  # PostgreSQL schema for tables; empty: the role's search_path
    poll_interval: float = 30.0  # seconds between fetch + reconcile of the fleet repository
    # Git network limits (docs/server.md, "Fetching the fleet repository"):
    git_timeout: float = 300.0  # seconds a fetch may take in all, then git is stopped
    git_connect_timeout: int = 30  # seconds to open an SSH connection to the Git host
    git_low_speed_limit: int = 1000  # bytes/s under which an HTTP(S) fetch counts as stalled...
    git_low_speed_time: int = 60  # ...for this many seconds, then git gives up
    reconcile_wait: float = 10.0  # seconds POST /v1/admin/reconcile waits for a fetch (then 202)
    manifest_ttl: int = 7 * 24 * 3600  # seconds a signed manifest stays valid
    resign_when_left: float = 0.5  # re-sign once less than this fraction of the ttl is left
    offline_after: int = 300  # seconds without a request before a device counts as offline
    status_history: int = 200  # status reports kept per device (older ones are dropped)
    bundle_base_url: str = ""  # when set, manifests point at <base>/<sha256> instead of /v1
    require_signed_commits: bool = False  # deploy only commits `git verify-commit` accepts
    allowed_signers_file: str = ""  # SSH allowed-signers file (relative to the data dir)
    max_body_bytes: int = 256 * 1024  # bytes of a JSON request body (enroll, status, admin)
    max_bundle_bytes: int = 4 * 1024**3  # bytes of one uploaded bundle
    max_skew: int = 300  # seconds of clock skew accepted on signed device requests
    heartbeat_flush_interval: float = 5.0  # seconds between writes of last_seen batches
    status_flush_interval: float = 0.01  # seconds a status batch gathers before its commit
    rollout_interval: float = 1.0  # seconds between evaluations of running rollouts
    # PostgreSQL: seconds between checks for changes another server made that no
    # notification announced (the notifications themselves arrive at once)
    change_check_interval: float = 5.0
    webhook_secret: str = ""  # shared secret of POST /v1/hooks/git; made by `server init`
    metrics_token: str = ""  # when set, GET /metrics needs `Authorization: Bearer <it>`
    token_rate: float = 20.0  # admin requests per second per token (0: no limit)
    token_burst: int = 200  # admin requests a token may make at once before the rate applies
    device_rate: float = 5.0  # requests per second per device (0: no limit)
    device_burst: int = 60  # requests a device may make at once before the rate applies
    enroll_rate: float = 1.0  # POST /v1/enroll per second per client address (0: no limit)
    enroll_burst: int = 30  # enrollments an address may send at once before the rate applies
    auth_failure_rate: float = 0.5  # admin 401s per second per client address (0: no limit)
    auth_failure_burst: int = 20  # admin 401s an address may get before the rate applies
    ready_poll_intervals: float = 3.0  # /readyz fails when Git was not fetched for this many
    min_free_bytes: int = 256 * 1024**2  # /readyz fails below this much free space (bytes)
    # Retention (docs/operations.md): rows older than this many days are pruned; 0 keeps all.
    retain_audit_days: float = 365.0  # audit log entries
    retain_status_days: float = 90.0  # status history (on top of status_history per device)
    retain_deployments_days: float = 365.0  # deployment history (never a current serial's)
    retain_rollouts_days: float = 180.0  # completed and superseded rollouts
    retain_revisions_days: float = 365.0  # revisions (never the deployed one or one served)
    prune_interval: float = 3600.0  # seconds between pruning passes (0: the server never prunes)
    prune_batch: int = 1000  # rows deleted per transaction while pruning
    bundle_gc_grace_days: float = 7.0  # bundle gc spares blobs uploaded more recently
    # Browser origins allowed to call the admin API (/v1/admin/*) cross-origin; empty: none.
    cors_origins: tuple[str, ...] = ()
    # Alerts (docs/operations.md#alerts): receivers are [[alerts]] tables, at the file's end.
    alerts: tuple[AlertReceiver, ...] = ()
    alert_group_seconds: float = 60.0  # device failures in this window make one alert
    alert_offline_fraction: float = 0.5  # alert when more accepted devices are offline (0: off)
    alert_retry_seconds: float = 10.0  # first retry delay; it doubles after each failure
    alert_retry_max_seconds: float = 1800.0  # the longest delay between two attempts
    alert_give_up_hours: float = 72.0  # an alert still undelivered this long counts as failed
    alert_interval: float = 1.0  # seconds between passes of the alert loop

    @property
    def manifest_key_path(self) -> Path:
        return self.data_dir / MANIFEST_KEY_FILE

    @property
    def settings_path(self) -> Path:
        return self.data_dir / SETTINGS_FILE

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def clone_dir(self) -> Path:
        return self.data_dir / "fleet.git"

    @property
    def git_config_path(self) -> Path:
        """Kernex's own Git configuration (credential helper, SSH command), when present;
        the server ignores the system's and the server user's Git configuration."""
        return self.data_dir / "gitconfig"

    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'kernex.db'}"

    def signers_path(self) -> Path | None:
        if not self.allowed_signers_file:
            return None
        return self.data_dir / self.allowed_signers_file

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> Settings:
        """Build settings from plain values (a parsed file, or a dict in tests)."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise ServerSetupError(
                f"unknown setting(s): {', '.join(unknown)}",
                hint=f"Known settings: {', '.join(sorted(fields))}.",
            )
        if "data_dir" not in values:
            raise ServerSetupError("settings need a data_dir")
        converted: dict[str, Any] = {}
        for name, raw in values.items():
            default = fields[name].default
            converted[name] = _convert(name, raw, default)
        for name in (*_ABOVE_ZERO, *_NOT_NEGATIVE):
            value = converted.get(name, fields[name].default)
            if value < 0 or (value == 0 and name in _ABOVE_ZERO):
                bound = "above" if name in _ABOVE_ZERO else "at least"
                raise ServerSetupError(
                    f"setting {name!r} must be {bound} 0, got {value!r}",
                    hint=f"Default: {fields[name].default!r} (see docs/server.md).",
                )
        return cls(**converted)

    @classmethod
    def load(cls, data_dir: Path, env: Mapping[str, str] | None = None) -> Settings:
        """Read ``server.toml`` from ``data_dir``; ``env`` may override the database URL."""
        data_dir = Path(data_dir).resolve()
        path = data_dir / SETTINGS_FILE
        if not path.is_file():
            raise ServerSetupError(
                f"no settings file at {path}",
                hint=f"Run `kernex server init --data-dir {data_dir}` first.",
            )
        try:
            values = tomllib.loads(path.read_text("utf-8"))
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ServerSetupError(
                f"cannot read {path}: {exc}", hint="Fix the TOML syntax."
            ) from exc
        values = {**values, "data_dir": data_dir}
        env = env or {}
        if env.get("KERNEX_DATABASE_URL"):
            values["database_url"] = env["KERNEX_DATABASE_URL"]
        return cls.from_mapping(values)


def data_dir_from(option: str | None, env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(option or env.get("KERNEX_DATA_DIR") or DEFAULT_DATA_DIR).resolve()


# Git network limits (kernex_git.NetworkLimits): a fetch needs time; 0 turns the HTTP
# low-speed check off and makes POST /v1/admin/reconcile answer without waiting.
_ABOVE_ZERO = ("git_timeout", "git_connect_timeout")
_NOT_NEGATIVE = ("git_low_speed_limit", "git_low_speed_time", "reconcile_wait")


def _convert(name: str, raw: Any, default: Any) -> Any:
    if name == "data_dir":
        return Path(raw)
    if name == "alerts":
        return parse_receivers(raw)
    if isinstance(default, tuple):
        if not isinstance(raw, list | tuple) or not all(isinstance(v, str) for v in raw):
            raise ServerSetupError(
                f"setting {name!r} must be a list of strings",
                hint=f'For example: {name} = ["https://ops.example.com"].',
            )
        return tuple(raw)
    expected = type(default)
    if expected is float and isinstance(raw, int) and not isinstance(raw, bool):
        return float(raw)
    if not isinstance(raw, expected) or (expected is int and isinstance(raw, bool)):
        raise ServerSetupError(
            f"setting {name!r} must be {expected.__name__}, got {type(raw).__name__}",
            hint=f"Default: {default!r}.",
        )
    return raw


def render_settings_file(repo: str, branch: str, webhook_secret: str = "") -> str:
    """The ``server.toml`` that ``kernex server init`` writes: every setting, commented."""
    lines = [
        "# Kernex server settings. Times are in seconds. See docs/server.md.",
        f"repo = {_toml_str(repo)}",
        f"branch = {_toml_str(branch)}",
    ]
    if webhook_secret:
        lines.append(webhook_secret_line(webhook_secret))
    for f in dataclasses.fields(Settings):
        if f.name in {"data_dir", "repo", "branch", "webhook_secret", "alerts"}:
            continue
        value = f.default
        text = (
            "[" + ", ".join(_toml_str(v) for v in value) + "]"
            if isinstance(value, tuple)
            else _toml_str(value)
            if isinstance(value, str)
            else str(value).lower()
            if isinstance(value, bool)
            else str(value)
        )
        lines.append(f"# {f.name} = {text}")
    lines += ALERTS_EXAMPLE
    return "\n".join(lines) + "\n"


ALERTS_EXAMPLE = [
    "# Alert receivers go last: every key after [[alerts]] belongs to that receiver.",
    "# [[alerts]]",
    '# name = "ops"',
    '# url = "https://alerts.example.com/kernex"',
    '# secret = "<openssl rand -hex 32>"  # the receiver checks Kernex-Signature with it',
    '# format = "generic"  # or "slack"',
]


def webhook_secret_line(secret: str) -> str:
    return f"webhook_secret = {_toml_str(secret)}  # shared with the Git host's webhook"


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
