"""``kernex bundle build|push|list|gc``: make a bundle, publish it, see what the server holds.

``build`` writes a reproducible tar.gz (and, with ``--sign-key``, the release signature
next to it as FILE.sig.json); ``push`` streams it to the server's store and records it in
``bundles/<name>.yaml`` as one validated commit; ``list`` shows the uploaded archives.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from kernex_cli.client import ServerOption, TokenOption, connect
from kernex_cli.gitops_cmds import JsonOption, PushOption, RepoOption, Scope, apply_edit
from kernex_cli.output import console, fail, fail_from, print_json, safe
from kernex_cli.publish import (
    BundleInfo,
    build_to_file,
    catalog_text,
    check_not_rebound,
    inspect_archive,
    read_signatures,
    signature_path_for,
    upload_bundle,
)
from kernex_core import keys
from kernex_core.errors import KernexError
from kernex_git import Repository, read_fleet_files

bundle_app = typer.Typer(
    help="Build, publish, list and garbage-collect bundles.", no_args_is_help=True
)


def register(app: typer.Typer) -> None:
    app.add_typer(bundle_app, name="bundle")


@bundle_app.command("build")
def build_cmd(
    src: Annotated[Path, typer.Argument(metavar="DIR", help="Directory with kernex-bundle.yaml.")],
    sign_key: Annotated[
        Path | None,
        typer.Option("--sign-key", help="Release private key (PEM): writes FILE.sig.json."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--output", "-o", help="Archive to write [NAME-VERSION.tar.gz].")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Pack DIR into a reproducible tar.gz: the same input always gives the same bytes.

    Example: kernex bundle build ./hello --sign-key ~/.config/kernex/release.key
    """
    try:
        key = None
        if sign_key is not None:
            key = keys.load_private_key_pem(_read(sign_key), source=str(sign_key))
        built = build_to_file(src, out, sign_key=key)
    except KernexError as exc:
        fail_from(exc)
    result = {
        **built.info.to_dict(),
        "path": str(built.path),
        "signature": str(built.signature_path) if built.signature_path else None,
    }
    if as_json:
        print_json(result)
        return
    info = built.info
    console.print(f"built [bold]{info.name}[/] {info.version} -> {built.path}", highlight=False)
    console.print(f"sha256 {info.sha256}\nsize   {info.size} bytes", highlight=False)
    if built.signature_path:
        console.print(f"release signature -> {built.signature_path}", highlight=False)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror}", hint="Check the path and its permissions.")


@bundle_app.command("push")
def push_cmd(
    archive: Annotated[Path, typer.Argument(metavar="FILE", help="A built bundle (tar.gz).")],
    repo: RepoOption = Path("."),
    push: PushOption = False,
    signature: Annotated[
        Path | None,
        typer.Option("--signature", help="Release signature file [FILE.sig.json when present]."),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Replace the bytes of a version the catalog already pins (rebind)."
        ),
    ] = False,
    server: ServerOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Upload a bundle to the server, then record it in bundles/NAME.yaml as a commit.

    Pushing the same file again changes nothing. A version the catalog (or the server's
    deployed fleet) already pins to other bytes is refused unless --force: devices that
    installed it would not see the change. The commit is made only when the fleet
    repository still validates with the new catalog entry.

    Example: kernex bundle push hello-1.1.0.tar.gz --repo ./fleet --push
    """
    try:
        info = inspect_archive(archive)
        signatures = []
        sig_file = signature or signature_path_for(archive)
        if signature is not None or sig_file.exists():
            signatures = read_signatures(sig_file, info)
        fleet = Repository.open(repo)
        scope = Scope("bundle", info.name)
        if fleet.is_dirty(scope.path):
            fail(
                f"{scope.path} has uncommitted changes",
                hint="Commit or stash them first, so this command commits only its own edit.",
            )
        old = fleet.show("HEAD", scope.path)
        if not force:
            check_not_rebound(old.decode("utf-8") if old else "", info)
        with connect(server, token) as client:
            uploaded = _upload_with_progress(client, archive, info, quiet=as_json, force=force)
        new_text = catalog_text(old.decode("utf-8") if old else "", info, signatures)
        message = f"bundle {info.name} {info.version}"
        outcome = apply_edit(fleet, scope, new_text, message, dry_run=False, push=push)
    except KernexError as exc:
        from kernex_cli.fleet_cmds import fail_invalid

        fail_invalid(exc)
    result = {
        **info.to_dict(),
        "uploaded": bool(uploaded.get("created")),
        "commit": outcome.commit,
        "release_signatures": len(signatures),
    }
    if as_json:
        print_json(result)
        return
    stored = "uploaded" if result["uploaded"] else "already on the server"
    console.print(f"{info.name} {info.version} ({info.size} bytes): {stored}", highlight=False)
    if outcome.commit:
        console.print(
            f"[green]committed[/] {outcome.commit[:12]}  {message} ({scope.path})", highlight=False
        )
    else:
        console.print(f"{scope.path} already records it; no commit made.", highlight=False)


def _upload_with_progress(
    client: Any, archive: Path, info: BundleInfo, *, quiet: bool, force: bool
) -> dict[str, Any]:
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TransferSpeedColumn,
    )

    with Progress(
        TextColumn("upload {task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=console,
        transient=True,
        disable=quiet or not console.is_terminal,
    ) as progress:
        task = progress.add_task(f"{info.name} {info.version}", total=info.size)

        def restart(exc: Exception) -> None:
            progress.reset(task)
            if not quiet:
                console.print(f"upload cut off ({safe(str(exc))}); starting again", highlight=False)

        return upload_bundle(
            client,
            archive,
            info,
            force=force,
            on_progress=lambda n: progress.advance(task, n),
            on_restart=restart,
        )


@bundle_app.command("list")
def list_cmd(
    repo: Annotated[
        Path,
        typer.Option("--repo", "-C", help="Fleet repository to name the archives from [.]."),
    ] = Path("."),
    server: ServerOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """List the bundle archives the server stores, named from the fleet's catalog.

    Example: kernex bundle list --json
    """
    try:
        with connect(server, token) as client:
            rows = client.get("/v1/admin/bundles")["bundles"]
    except KernexError as exc:
        fail_from(exc)
    names = _catalog_names(repo)
    for row in rows:
        row["bundles"] = names.get(row["sha256"], [])
    if as_json:
        print_json({"bundles": rows})
        return
    from rich.table import Table

    table = Table("bundle", "sha256", "size", "uploaded", "by")
    for row in rows:
        table.add_row(
            safe(", ".join(row["bundles"]) or "-"),
            safe(row["sha256"][:16]),
            safe(row["size"]),
            safe(row.get("uploaded_at") or ""),
            safe(row.get("uploaded_by") or ""),
        )
    console.print(table)


@bundle_app.command("gc")
def gc_cmd(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only list what would be removed.")
    ] = False,
    server: ServerOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Remove stored bundles that no retained revision, manifest or rollout names and that
    were uploaded before the grace period (bundle_gc_grace_days). Needs an admin token.

    Run with --dry-run first. Example: kernex bundle gc --dry-run
    """
    try:
        with connect(server, token) as client:
            result = client.request(
                "POST", "/v1/admin/bundles/gc", params={"dry_run": "1" if dry_run else None}
            )
    except KernexError as exc:
        fail_from(exc)
    if as_json:
        print_json(result)
        return
    verb = "would remove" if dry_run else "removed"
    for row in result["removed"]:
        console.print(f"{verb} {safe(row['sha256'])}  {safe(row['size'])} bytes", highlight=False)
    console.print(
        f"{verb} {len(result['removed'])} bundle(s), {result['removed_bytes']} bytes; "
        f"kept {result['kept']}; the store holds {result['store_bytes']} bytes",
        highlight=False,
    )
    for commit in result.get("unreadable_revisions") or []:
        console.print(
            f"[yellow]note:[/] the catalog of revision {commit[:12]} could not be read; "
            "bundles only it names were not protected",
            highlight=False,
        )


def _catalog_names(repo: Path) -> dict[str, list[str]]:
    """sha256 -> ["name@version", ...] from the repository's HEAD; empty when there is none."""
    from kernex_core.fleet import load_fleet

    try:
        fleet = load_fleet(read_fleet_files(Repository.open(repo), "HEAD"))
    except KernexError:
        return {}
    out: dict[str, list[str]] = {}
    for name, versions in fleet.catalog.items():
        for version, entry in versions.items():
            out.setdefault(entry.sha256, []).append(f"{name}@{version}")
    return out
