"""``kernex server``: init, run and migrate the Kernex server (``info`` asks a running one,
see ``server_info_cmds``).

The server package is imported inside the commands, so ``kernex --help`` stays fast and
a device installation without the server's dependencies can still run the CLI.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from kernex_cli.output import console, fail_from, print_json
from kernex_core.errors import KernexError

server_app = typer.Typer(
    help="Run the Kernex server: init, run, migrate, backup, restore, prune; info on a "
    "running one.",
    no_args_is_help=True,
)

DATA_DIR_HELP = "Data directory (default: $KERNEX_DATA_DIR or ./kernex-data)."


def register(app: typer.Typer) -> None:
    from kernex_cli import server_info_cmds

    server_info_cmds.register(server_app)
    app.add_typer(server_app, name="server")


def _data_dir(option: Path | None) -> Path:
    from kernex_server.settings import data_dir_from

    return data_dir_from(str(option) if option else None, os.environ)


@server_app.command("init")
def init(
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help=DATA_DIR_HELP)] = None,
    repo: Annotated[
        str, typer.Option("--repo", help="Fleet repository: a local path or a URL.")
    ] = "",
    branch: Annotated[str, typer.Option("--branch", help="Branch to deploy.")] = "main",
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Create the data directory, the manifest key, settings and the first admin token.

    The admin token and the webhook secret are printed once; only their hashes are kept.

    Example: kernex server init --data-dir /var/lib/kernex --repo https://git.example/fleet.git
    """
    from kernex_server.setup import init_data_dir

    try:
        result = init_data_dir(_data_dir(data_dir), repo=repo, branch=branch, env=dict(os.environ))
    except KernexError as exc:
        fail_from(exc)
    if as_json:
        print_json(
            {
                "data_dir": str(result.data_dir),
                "manifest_key_id": result.manifest_key_id,
                "admin_token": result.admin_token,
                "webhook_secret": result.webhook_secret,
            }
        )
        return
    console.print(f"data directory  {result.data_dir}", highlight=False)
    console.print(f"manifest key    {result.manifest_key_id}", highlight=False)
    if result.admin_token:
        console.print("admin token     (shown once; store it now):", highlight=False)
        typer.echo(result.admin_token)
    else:
        console.print("admin token     (already created earlier; not shown again)")
    if result.webhook_secret:
        console.print("webhook secret  (for the Git host; also in server.toml):", highlight=False)
        typer.echo(result.webhook_secret)


@server_app.command("migrate")
def migrate_cmd(
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help=DATA_DIR_HELP)] = None,
) -> None:
    """Bring the database schema up to date (the server also does this at start).

    Example: KERNEX_DATABASE_URL=postgresql+psycopg://kernex@db/kernex kernex server migrate
    """
    from kernex_server.database import current_revision, make_engine, migrate
    from kernex_server.settings import Settings

    try:
        settings = Settings.load(_data_dir(data_dir), dict(os.environ))
        engine = make_engine(settings.effective_database_url(), schema=settings.database_schema)
        try:
            migrate(engine, schema=settings.database_schema)
            revision = current_revision(engine)
        finally:
            engine.dispose()
    except KernexError as exc:
        fail_from(exc)
    console.print(f"database schema at revision {revision}", highlight=False)


@server_app.command("backup")
def backup_cmd(
    out: Annotated[Path, typer.Argument(help="The archive file to write (mode 0600).")],
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help=DATA_DIR_HELP)] = None,
    bundles: Annotated[
        bool, typer.Option("--bundles", help="Include the bundle store (can be large).")
    ] = False,
    method: Annotated[
        str,
        typer.Option(
            "--method",
            help="auto (SQLite backup API, or pg_dump when installed), sqlite, pg_dump, "
            "or logical (rows as JSON lines; restores onto either database kind).",
        ),
    ] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON.")] = False,
) -> None:
    """Write a consistent snapshot of the server's state to one archive, while it runs:
    database, manifest key, server.toml, and with --bundles the bundle store.

    The archive holds the manifest key and the webhook secret: keep it as safe as the
    data directory. Example: kernex server backup /backups/kernex-$(date +%F).tar.gz
    """
    from kernex_server.backup import create_backup
    from kernex_server.settings import Settings

    try:
        settings = Settings.load(_data_dir(data_dir), dict(os.environ))
        manifest = create_backup(settings, out, bundles=bundles, method=method)
    except KernexError as exc:
        fail_from(exc)
    if as_json:
        print_json(manifest)
        return
    db = manifest["database"]
    console.print(
        f"wrote {out} ({db['kind']} via {db['method']}, schema revision "
        f"{db['alembic_revision']}, {manifest['bundles']['count']} bundle(s))",
        highlight=False,
        soft_wrap=True,
    )


@server_app.command("restore")
def restore_cmd(
    archive: Annotated[Path, typer.Argument(help="An archive written by `kernex server backup`.")],
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help=DATA_DIR_HELP)] = None,
    force: Annotated[
        bool,
        typer.Option("--force", help="Overwrite a data directory or database that has data."),
    ] = False,
    serial_jump: Annotated[
        int,
        typer.Option(
            "--serial-jump",
            min=1,
            help="Serials resume this far above the highest one in the backup.",
        ),
    ] = 1_000_000,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Restore a backup into a data directory (and the database its server.toml names, or
    $KERNEX_DATABASE_URL); then start the server there. Devices keep their enrollment.

    Manifest serials resume above anything a device could have accepted after the backup
    (docs/operations.md). Example: kernex server restore kernex.tar.gz --data-dir /var/lib/kernex
    """
    from kernex_server.backup import restore_backup

    try:
        result = restore_backup(
            archive, _data_dir(data_dir), force=force, env=os.environ, serial_jump=serial_jump
        )
    except KernexError as exc:
        fail_from(exc)
    if as_json:
        print_json(
            {
                "data_dir": str(result.data_dir),
                "serial_floor": result.serial_floor,
                "bundles": result.blobs,
                "backup": result.manifest,
            }
        )
        return
    console.print(
        f"restored {archive} (taken {result.manifest['created_at']}) into {result.data_dir}; "
        f"{result.blobs} bundle(s); serials resume at {result.serial_floor}",
        highlight=False,
    )


@server_app.command("prune")
def prune_cmd(
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help=DATA_DIR_HELP)] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only count what would be removed.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the counts as JSON.")] = False,
) -> None:
    """Remove rows past the retain_*_days settings now (the server also does this every
    prune_interval seconds). What devices are served is never removed.

    Example: kernex server prune --dry-run
    """
    from sqlalchemy.exc import SQLAlchemyError

    from kernex_server.database import make_engine, session_factory
    from kernex_server.retention import Pruner, RetentionPolicy
    from kernex_server.settings import Settings

    try:
        settings = Settings.load(_data_dir(data_dir), dict(os.environ))
        engine = make_engine(settings.effective_database_url(), schema=settings.database_schema)
        try:
            pruner = Pruner(session_factory(engine), RetentionPolicy.of(settings))
            counts = pruner.plan() if dry_run else pruner.prune()
        finally:
            engine.dispose()
    except KernexError as exc:
        fail_from(exc)
    except SQLAlchemyError as exc:  # e.g. the database is unreachable
        first = str(exc).strip().splitlines()[0]
        fail_from(KernexError(f"cannot prune: {first}", hint="Check the database settings."))
    if as_json:
        print_json({"dry_run": dry_run, "rows": counts})
        return
    verb = "would remove" if dry_run else "removed"
    for kind, n in counts.items():
        console.print(f"{verb} {n:>8} {kind.replace('_', ' ')}", highlight=False)


KEEP_ALIVE_SECONDS = 75  # idle seconds before the server closes a kept-alive connection


@server_app.command("run")
def run(
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help=DATA_DIR_HELP)] = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 8443,
    log_level: Annotated[
        str, typer.Option("--log-level", help="debug, info, warning, error.")
    ] = "info",
    root_path: Annotated[
        str,
        typer.Option(
            "--root-path",
            help="The path prefix a proxy strips (e.g. /kernex when devices use "
            "https://host/kernex); signed device requests are checked over it.",
        ),
    ] = "",
) -> None:
    """Serve devices and admins (reconciling the fleet repository in the background).

    Example: kernex server run --data-dir /var/lib/kernex --host 0.0.0.0 --port 8443
    """
    import uvicorn

    from kernex_server.app import create_app
    from kernex_server.database import make_engine, migrate
    from kernex_server.settings import Settings

    try:
        settings = Settings.load(_data_dir(data_dir), dict(os.environ))
        engine = make_engine(settings.effective_database_url(), schema=settings.database_schema)
        try:
            migrate(engine, schema=settings.database_schema)
        finally:
            engine.dispose()
        app = create_app(settings)
    except KernexError as exc:
        fail_from(exc)
    from kernex_server.logs import configure_logging

    configure_logging(log_level.upper())
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=log_level,
        log_config=None,
        access_log=False,
        proxy_headers=False,
        root_path=root_path.rstrip("/"),
        # Longer than a client's idle keep-alive (httpx: 5 s), so the client closes an idle
        # connection first; at equal timeouts a request on a connection the server is
        # closing fails with a read error, and a failed bundle download waits for a retry.
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
    )
