"""Moving a registry: migration between stores, backups and restores. Each ends with proof.

A migration copies the records' exact bytes, so the target recomputes the same chain values and
Merkle roots; it checks the chain head after every batch, then copies the signed checkpoints and
cosignatures. Backups use SQLite's online backup API or pg_dump; a restore refuses to overwrite
a registry. Run `verify` after each (ops/backup and ops/restore do).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from eventsourcing.persistence import StoredEvent

from domain.errors import DomainError
from ledger.application import Registry
from ledger.checkpoints import b64
from ledger.store import environment, is_postgres, require_registry, sqlite_path

BATCH = 2000


def migrate(source: Registry, target: Registry,
            progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Copy every record, checkpoint, cosignature and spent signature from `source` into an
    empty `target`."""
    if target.log_position() > 0:
        raise DomainError("already_exists", f"the target registry {target.url} is not empty; a "
                          "migration only fills an empty one")
    total = source.log_position()
    copied = 0
    start = 1
    while start <= total:
        records = source.recorder.select_records(start, BATCH, stop=total)
        if not records:
            break
        target.recorder.insert_events([
            StoredEvent(originator_id=r.originator_id, originator_version=r.originator_version,
                        topic=r.topic, state=r.state) for r in records])
        size, chain = target.recorder.head()
        if size != records[-1].position or chain != records[-1].chain:
            raise DomainError("log_inconsistent", f"the target's chain differs from the source's at position "
                              f"{records[-1].position}; the migration stopped")
        copied += len(records)
        start = records[-1].position + 1
        if progress:
            progress(copied, total)
    checkpoints = source.recorder.select_checkpoints()
    for size, body, signature in checkpoints:
        target.recorder.insert_checkpoint(size, body, signature)
    cosignatures = source.recorder.select_cosignatures()
    for size, witness, key_id, signature in cosignatures:
        target.recorder.insert_cosignature(size, witness, key_id, signature)
    # Signatures of refused requests still within their window: the target refuses them as
    # replays too, if it serves before they expire.
    spent = source.recorder.select_spent()
    target.recorder.insert_spent(spent)
    source_root = source.log_tree(total).root_at(total)
    target_root = target.log_tree(total).root_at(total)
    if source_root != target_root:
        raise DomainError("log_inconsistent", "the target's Merkle root differs from the source's")
    return {"records": copied, "checkpoints": len(checkpoints), "cosignatures": len(cosignatures),
            "spent_signatures": len(spent), "root": b64(source_root), "target_root": b64(target_root), "from": source.url,
            "to": target.url}


def _pg_env(url: str) -> tuple[dict[str, str], list[str]]:
    env = environment(url)
    parsed = urlparse(url)
    process_env = {**os.environ, "PGPASSWORD": unquote(parsed.password or "")}
    args = ["-h", env["POSTGRES_HOST"], "-p", env["POSTGRES_PORT"], "-U", env["POSTGRES_USER"],
            "-d", env["POSTGRES_DBNAME"]]
    return process_env, args


def backup(url: str, path: Path) -> dict[str, Any]:
    """A consistent copy of a live registry: SQLite's online backup, or pg_dump's custom format."""
    if path.exists():
        raise DomainError("already_exists", f"{path} exists; a backup never overwrites a file")
    require_registry(url)
    db = sqlite_path(url)
    if db is not None:
        src = sqlite3.connect(db)
        dst = sqlite3.connect(path)
        try:
            src.backup(dst)
        finally:
            dst.close()
            src.close()
        return {"kind": "sqlite", "file": str(path), "bytes": path.stat().st_size}
    if is_postgres(url):
        env, args = _pg_env(url)
        schema = environment(url).get("POSTGRES_SCHEMA")
        cmd = ["pg_dump", "-Fc", "-f", str(path), *args] + (["-n", schema] if schema else [])
        _run(cmd, env)
        return {"kind": "pg_dump", "file": str(path), "bytes": path.stat().st_size}
    raise DomainError("invalid_argument", f"cannot back up {url}")


def restore(path: Path, url: str) -> dict[str, Any]:
    """Restore a backup into a new SQLite file or an empty PostgreSQL database."""
    if not path.exists():
        raise DomainError("invalid_argument", f"no backup file at {path}")
    db = sqlite_path(url)
    if db is not None:
        if db == ":memory:":
            raise DomainError("invalid_argument", "restore into a file, not an in-memory database")
        if Path(db).exists():
            raise DomainError("already_exists", f"{db} exists; a restore never overwrites a registry")
        Path(db).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, db)
        return {"kind": "sqlite", "db": url}
    if is_postgres(url):
        target = Registry(url)
        try:
            if target.log_position() > 0:
                raise DomainError("already_exists", f"{url} already holds a registry; restore into "
                                  "an empty database")
        finally:
            target.close()
        env, args = _pg_env(url)
        _run(["pg_restore", "--clean", "--if-exists", "--no-owner", *args, str(path)], env)
        return {"kind": "pg_restore", "db": url}
    raise DomainError("invalid_argument", f"cannot restore into {url}")


def _run(cmd: list[str], env: dict[str, str]) -> None:
    if shutil.which(cmd[0]) is None:
        raise DomainError("invalid_argument", f"{cmd[0]} is not installed (PostgreSQL client tools)")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600, check=False)
    if done.returncode != 0:
        raise DomainError("operation_failed", f"{cmd[0]} failed: {done.stderr.strip()[:500]}")
