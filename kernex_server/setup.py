"""``kernex server init``: the data directory, manifest key, settings and first admin token
(and the dashboard's session key).

Nothing secret has a default: the key, the token and the webhook secret are generated
here. The key file and ``server.toml`` (which holds the webhook secret) are mode 0600;
the admin token is shown once and stored only as a hash.
"""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from kernex_core import keys
from kernex_core.fsutil import atomic_write_bytes, atomic_write_text
from kernex_git import GitEnv, is_remote, redact_url, run_git
from kernex_server.database import make_engine, migrate, session_factory
from kernex_server.errors import ServerSetupError
from kernex_server.settings import Settings, render_settings_file, webhook_secret_line
from kernex_server.store import Store
from kernex_server.ui.session import session_key

FIRST_TOKEN_NAME = "admin"  # noqa: S105 - a name, not a secret


@dataclass(frozen=True)
class InitResult:
    data_dir: Path
    manifest_key_id: str
    admin_token: str | None  # None when the database already had tokens
    webhook_secret: str | None  # None when server.toml already had one


def _work_tree_holding(data_dir: Path, repo: str) -> Path | None:
    """The work tree of the local fleet repository ``repo`` when ``data_dir`` is in it."""
    if not repo or is_remote(repo) or not Path(repo).expanduser().is_dir():
        return None
    done = run_git(
        ["rev-parse", "--show-toplevel"],
        cwd=Path(repo).expanduser(),
        env=GitEnv.operator(),
        check=False,
    )
    if done.returncode != 0 or not done.stdout.strip():
        return None  # a bare repository has no work tree
    top = Path(done.stdout.decode("utf-8", "surrogateescape").strip()).resolve()
    return top if data_dir == top or top in data_dir.parents else None


def init_data_dir(
    data_dir: Path, *, repo: str, branch: str, env: dict[str, str] | None = None
) -> InitResult:
    data_dir = Path(data_dir).resolve()
    top = _work_tree_holding(data_dir, repo)
    if top is not None:
        raise ServerSetupError(
            f"the data directory {data_dir} would be inside the fleet repository's work "
            f"tree {top}: its manifest key, database and secrets could be committed",
            hint="Put it outside the repository: `kernex server init --data-dir "
            "../kernex-server --repo .` (or /var/lib/kernex).",
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)
    key_path = data_dir / "keys" / "manifest.key"
    settings_path = data_dir / "server.toml"
    webhook_secret: str | None = None
    if not settings_path.exists():
        webhook_secret = secrets.token_urlsafe(32)
        text = render_settings_file(repo, branch, webhook_secret)
        atomic_write_text(settings_path, text, mode=0o600)
    if key_path.exists():
        key = keys.load_private_key_pem(key_path.read_bytes(), source=str(key_path))
    else:
        key_path.parent.mkdir(mode=0o700, exist_ok=True)
        key = keys.generate_ed25519()
        atomic_write_bytes(key_path, keys.private_key_to_pem(key), mode=0o600)
    settings = Settings.load(data_dir, env)
    if not settings.webhook_secret:  # a data directory made before webhooks existed
        webhook_secret = secrets.token_urlsafe(32)
        old = settings_path.read_text("utf-8")
        text = old + ("" if old.endswith("\n") else "\n") + webhook_secret_line(webhook_secret)
        atomic_write_text(settings_path, text + "\n", mode=0o600)
        settings = Settings.load(data_dir, env)
    if repo and settings.repo != repo:
        raise ServerSetupError(
            f"{settings_path} already names repo {redact_url(settings.repo)!r}",
            hint="Edit server.toml to change the fleet repository.",
        )
    session_key(settings)  # the dashboard's cookie-signing key (kernex_server.ui.session)
    engine = make_engine(settings.effective_database_url(), schema=settings.database_schema)
    try:
        migrate(engine, schema=settings.database_schema)
        store = Store(session_factory(engine))
        token = None
        if store.count_api_tokens() == 0:
            token = store.create_api_token(FIRST_TOKEN_NAME, "admin", now=time.time())
    finally:
        engine.dispose()
    return InitResult(data_dir, keys.fingerprint(key.public_key()), token, webhook_secret)
