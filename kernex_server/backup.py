"""``kernex server backup`` and ``kernex server restore``: one archive of the server's state.

The archive is a gzipped tar whose first member, ``kernex-backup.json``, says what it
holds: format version, creation time, the database's kind and the method of its snapshot
(see ``kernex_server.dbdump``), its Alembic revision, and the SHA-256 of every file. It
holds the database snapshot, ``server.toml``, the manifest key, the allowed-signers file
when one is set, and, with ``bundles=True``, the bundle store (each blob is named by its
own digest). It is written mode 0600: the key and the webhook secret are in it.

A restore refuses a data directory that is not empty, or a database that has tables,
unless forced; checks every checksum before it places anything; migrates the database to
the newest schema; and raises the serial floor (``kernex_server.serials``) so that no
device is ever served a serial lower than one it accepted from the server before.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import sqlite3
import tarfile
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from kernex_core.timefmt import format_time
from kernex_server import dbdump
from kernex_server.database import current_revision, make_engine, session_factory
from kernex_server.dbdump import LOGICAL, PG_DUMP, SQLITE, BackupError
from kernex_server.models import BundleBlob
from kernex_server.serials import DEFAULT_SERIAL_JUMP, highest_serial, raise_floor
from kernex_server.settings import MANIFEST_KEY_FILE, SETTINGS_FILE, Settings

FORMAT = "kernex-backup"
VERSION = 1
MANIFEST = "kernex-backup.json"
SQLITE_FILE = "database/kernex.db"
PG_DUMP_FILE = "database/kernex.pgdump"
LOGICAL_DIR = "database/logical"
_BLOB_RE = re.compile(r"^blobs/sha256/([0-9a-f]{2})/(\1[0-9a-f]{62})\Z")
_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class RestoreResult:
    data_dir: Path
    manifest: dict[str, Any]
    serial_floor: int
    blobs: int


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _engine(settings: Settings) -> Engine:
    return make_engine(settings.effective_database_url(), schema=settings.database_schema)


# -- backup ------------------------------------------------------------------------------


def create_backup(
    settings: Settings, out: Path, *, bundles: bool = False, method: str = "auto"
) -> dict[str, Any]:
    """Write the archive to ``out`` (atomically); return its manifest."""
    out = Path(out).resolve()
    if out.is_dir():
        raise BackupError(f"{out} is a directory", hint="Name the archive file to write.")
    out.parent.mkdir(parents=True, exist_ok=True)
    engine = _engine(settings)
    try:
        chosen = dbdump.choose_method(engine, method)
        schema = dbdump.current_schema(engine, settings.database_schema)
        with tempfile.TemporaryDirectory(prefix=".kernex-backup.", dir=out.parent) as tmp:
            stage = Path(tmp)
            (stage / "database").mkdir()
            revision = current_revision(engine)
            if chosen == SQLITE:
                dbdump.sqlite_snapshot(engine, stage / SQLITE_FILE)
                blobs = _sqlite_blobs(stage / SQLITE_FILE) if bundles else []
            elif chosen == PG_DUMP:
                dbdump.pg_dump(engine, schema, stage / PG_DUMP_FILE)
                blobs = _live_blobs(engine) if bundles else []
            else:
                counts = dbdump.logical_export(engine, stage / LOGICAL_DIR)
                revision = _logical_revision(stage / LOGICAL_DIR) or revision
                blobs = _logical_blobs(stage / LOGICAL_DIR) if bundles else []
            files = _config_files(settings)
            manifest: dict[str, Any] = {
                "format": FORMAT,
                "version": VERSION,
                "created_at": format_time(time.time()),
                "database": {
                    "kind": engine.dialect.name,
                    "method": chosen,
                    "schema": schema,
                    "alembic_revision": revision,
                },
                "files": {},
                "bundles": {"included": bundles, "count": 0, "bytes": 0},
            }
            if chosen == LOGICAL:
                manifest["database"]["rows"] = counts
            for path in sorted(stage.rglob("*")):
                if path.is_file():
                    files[path.relative_to(stage).as_posix()] = path
            for name, path in files.items():
                manifest["files"][name] = _sha256_file(path)
            _write_archive(out, manifest, files, settings.blob_dir, blobs)
    finally:
        engine.dispose()
    return manifest


def _config_files(settings: Settings) -> dict[str, Path]:
    files = {SETTINGS_FILE: settings.settings_path, MANIFEST_KEY_FILE: settings.manifest_key_path}
    for name in ("keys/manifest.next.key", "keys/rotation.json", "keys/release-keys.json"):
        files[name] = settings.data_dir / name  # a key rotation in progress, release keys
    signers = settings.signers_path()
    if signers is not None and signers.is_file():
        files[settings.allowed_signers_file] = signers
    return {name: path for name, path in files.items() if path.is_file()}


def _sqlite_blobs(snapshot: Path) -> list[str]:
    conn = sqlite3.connect(snapshot)
    try:
        return [row[0] for row in conn.execute("SELECT sha256 FROM bundle_blobs")]
    finally:
        conn.close()


def _live_blobs(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.scalars(sa.select(BundleBlob.sha256)))


def _logical_blobs(folder: Path) -> list[str]:
    path = folder / "bundle_blobs.jsonl"
    if not path.is_file():
        return []
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line)["sha256"] for line in fh]


def _logical_revision(folder: Path) -> str | None:
    path = folder / "alembic_version.jsonl"
    if not path.is_file():
        return None
    lines = path.read_text("utf-8").splitlines()
    return str(json.loads(lines[0])["version_num"]) if lines else None


def _write_archive(
    out: Path,
    manifest: dict[str, Any],
    files: Mapping[str, Path],
    blob_dir: Path,
    blobs: list[str],
) -> None:
    partial = out.with_name(f".{out.name}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
            present = []
            for sha in sorted(set(blobs)):
                path = blob_dir / "sha256" / sha[:2] / sha
                if path.is_file():  # a blob removed since the snapshot is not needed by it
                    present.append((sha, path))
            manifest["bundles"]["count"] = len(present)
            manifest["bundles"]["bytes"] = sum(p.stat().st_size for _, p in present)
            data = json.dumps(manifest, indent=2, sort_keys=True).encode("utf-8") + b"\n"
            info = tarfile.TarInfo(MANIFEST)
            info.size, info.mtime, info.mode = len(data), int(time.time()), 0o600
            tar.addfile(info, io.BytesIO(data))
            for name, path in files.items():
                tar.add(path, arcname=name, recursive=False)
            for sha, path in present:
                tar.add(path, arcname=f"blobs/sha256/{sha[:2]}/{sha}", recursive=False)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(partial, out)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


# -- restore -----------------------------------------------------------------------------


def read_manifest(tar: tarfile.TarFile, archive: Path) -> dict[str, Any]:
    first = tar.next()
    if first is None or first.name != MANIFEST or not first.isfile():
        raise BackupError(
            f"{archive} is not a Kernex backup (no {MANIFEST} at its start)",
            hint="Pass a file written by `kernex server backup`.",
        )
    fh = tar.extractfile(first)
    try:
        manifest: dict[str, Any] = json.loads(fh.read() if fh is not None else b"")
    except (ValueError, UnicodeDecodeError) as exc:
        raise BackupError(f"{archive}: {MANIFEST} is not JSON: {exc}") from exc
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise BackupError(
            f"{archive} is a backup of format {manifest.get('format')!r} version "
            f"{manifest.get('version')!r}; this Kernex reads {FORMAT} version {VERSION}",
            hint="Restore it with the Kernex version that wrote it.",
        )
    return manifest


def restore_backup(
    archive: Path,
    data_dir: Path,
    *,
    force: bool = False,
    env: Mapping[str, str] | None = None,
    serial_jump: int = DEFAULT_SERIAL_JUMP,
) -> RestoreResult:
    archive, data_dir = Path(archive).resolve(), Path(data_dir).resolve()
    if not archive.is_file():
        raise BackupError(f"no backup at {archive}", hint="Pass the file `backup` wrote.")
    if data_dir.is_dir() and any(data_dir.iterdir()) and not force:
        raise BackupError(
            f"{data_dir} is not empty",
            hint="Restore into a new data directory, or pass --force to overwrite this one.",
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)
    with tempfile.TemporaryDirectory(prefix=".restore.", dir=data_dir) as tmp:
        stage = Path(tmp)
        try:
            with tarfile.open(archive, mode="r:gz") as tar:
                manifest = read_manifest(tar, archive)
                blobs = _extract(tar, manifest, stage)
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise BackupError(f"cannot read {archive}: {exc}", hint="Is it a backup?") from exc
        _place_files(stage, data_dir, manifest)
        settings = Settings.load(data_dir, dict(env or {}))
        floor = _restore_database(settings, stage, manifest, force=force, jump=serial_jump)
        _place_blobs(stage, settings.blob_dir)
    return RestoreResult(data_dir, manifest, floor, blobs)


def _extract(tar: tarfile.TarFile, manifest: dict[str, Any], stage: Path) -> int:
    """Write every member into ``stage``, checking its SHA-256; return the blob count."""
    expected: dict[str, str] = dict(manifest.get("files") or {})
    seen: set[str] = set()
    blobs = 0
    for member in tar:
        name = member.name
        if name == MANIFEST and member.offset == 0:
            continue  # read first, by read_manifest
        blob = _BLOB_RE.match(name)
        unsafe = name.startswith("/") or ".." in Path(name).parts
        if unsafe or not member.isfile() or (name not in expected and blob is None):
            raise BackupError(
                f"the backup holds an unexpected entry {name!r}",
                hint="The archive was altered; restore from another backup.",
            )
        want = expected.get(name) or (blob.group(2) if blob else "")
        target = stage / name
        target.parent.mkdir(parents=True, exist_ok=True)
        src = tar.extractfile(member)
        if src is None or _copy_hashing(src, target) != want:
            raise BackupError(
                f"{name} in the backup does not match its checksum",
                hint="The archive is damaged; restore from another backup.",
            )
        seen.add(name)
        blobs += blob is not None
    missing = sorted(set(expected) - seen)
    if missing:
        raise BackupError(
            f"the backup lacks {', '.join(missing)}",
            hint="The archive is truncated; restore from another backup.",
        )
    return blobs


def _copy_hashing(src: IO[bytes], target: Path) -> str:
    digest = hashlib.sha256()
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        while chunk := src.read(_CHUNK):
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


def _place_files(stage: Path, data_dir: Path, manifest: dict[str, Any]) -> None:
    for name in manifest["files"]:
        if name.startswith("database/"):
            continue
        target = data_dir / name
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.replace(stage / name, target)


def _place_blobs(stage: Path, blob_dir: Path) -> None:
    for path in sorted((stage / "blobs").glob("sha256/*/*")):
        target = blob_dir / "sha256" / path.parent.name / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(path, 0o644)
        os.replace(path, target)


def _highest_serial(engine: Engine) -> int:
    """The highest serial of a database about to be replaced (0 if it has none)."""
    try:
        with session_factory(engine)() as s:
            return highest_serial(s)
    except sa.exc.DBAPIError:  # not a Kernex database, or one of a much older schema
        return 0


def _restore_database(
    settings: Settings, stage: Path, manifest: dict[str, Any], *, force: bool, jump: int
) -> int:
    db = manifest["database"]
    engine = _engine(settings)
    try:
        kind = engine.dialect.name
        if db["method"] != LOGICAL and db["kind"] != kind:
            raise BackupError(
                f"the backup holds a {db['kind']} database; this server uses {kind}",
                hint="Restore onto the same kind, or move with a `--method logical` backup.",
            )
        dbdump.ensure_schema(engine, settings.database_schema)
        replaced = 0
        if dbdump.has_tables(engine):
            if not force:
                raise BackupError(
                    f"the database {engine.url.render_as_string(hide_password=True)} "
                    "already has tables",
                    hint="Point the restore at an empty database, or pass --force.",
                )
            replaced = _highest_serial(engine)  # its devices may have seen these serials
            dbdump.drop_tables(engine)
        if db["method"] == SQLITE:
            engine.dispose()
            dbdump.restore_sqlite(stage / SQLITE_FILE, engine)
        elif db["method"] == PG_DUMP:
            schema = dbdump.current_schema(engine, settings.database_schema)
            if schema != db["schema"]:
                raise BackupError(
                    f"the backup is of schema {db['schema']!r}; the server uses {schema!r}",
                    hint=f'Set database_schema = "{db["schema"]}" in server.toml, or move '
                    "the server with a `--method logical` backup.",
                )
            dbdump.pg_restore(stage / PG_DUMP_FILE, engine, schema)
        else:
            dbdump.logical_import(stage / LOGICAL_DIR, engine, db.get("alembic_revision"))
        dbdump.migrate_to_head(engine, settings.database_schema)
        with session_factory(engine).begin() as s:
            return raise_floor(s, jump, at_least=replaced)
    finally:
        engine.dispose()
        shutil.rmtree(stage / "database", ignore_errors=True)
