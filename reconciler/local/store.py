"""Local mode's desired state and status in one SQLite file, `<data-dir>/wakegate.db`.

Services are kept as the applied manifests, Revisions in the `Revision.to_dict` form,
status as the JSON the reconciler last wrote. Every method is one transaction of its
own, or a part of the caller's `transaction()`, so an apply that creates a revision and
stores the service commits both or neither.

The database is owner-only (0600); SQLite gives its -wal and -shm files the mode of the
database file.

WAL mode with `synchronous=NORMAL`: a committed transaction survives the process
crashing; only a power loss can take the last ones back. Calls take well under a
millisecond, but they block: keep them off request paths (`asyncio.to_thread` is fine,
the connection is shared under a lock).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

DB_FILENAME = "wakegate.db"

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE services (
            namespace TEXT NOT NULL,
            name TEXT NOT NULL,
            manifest TEXT NOT NULL,
            generation INTEGER NOT NULL,
            applied_at TEXT NOT NULL,
            PRIMARY KEY (namespace, name)
        )""",
        """CREATE TABLE revisions (
            namespace TEXT NOT NULL,
            name TEXT NOT NULL,
            service TEXT NOT NULL,
            generation INTEGER NOT NULL,
            revision TEXT NOT NULL,
            created_at TEXT NOT NULL,
            PRIMARY KEY (namespace, name)
        )""",
        "CREATE INDEX revisions_by_service ON revisions (namespace, service, generation)",
        """CREATE TABLE service_status (
            namespace TEXT NOT NULL,
            name TEXT NOT NULL,
            status TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            PRIMARY KEY (namespace, name)
        )""",
        "CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    ),
)
"""`MIGRATIONS[i]` takes the schema from version i to i + 1; append, never edit."""

SCHEMA_VERSION = len(MIGRATIONS)


class StoreError(RuntimeError):
    """The store cannot do what was asked; the message is one line."""


@dataclass(frozen=True, slots=True)
class StoredService:
    namespace: str
    name: str
    manifest: dict[str, Any]
    generation: int
    """1 when first applied, one more each time its `spec` changes."""
    applied_at: datetime

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _service_key(manifest: Mapping[str, Any]) -> tuple[str, str]:
    metadata = manifest.get("metadata") or {}
    name = metadata.get("name")
    if not name or not isinstance(name, str):
        raise StoreError("a Service needs metadata.name to be stored")
    namespace = metadata.get("namespace") or "default"
    return str(namespace), name


def _owner_only(path: Path) -> None:
    """Create the database file 0600 before SQLite does (with the umask's mode), and
    take group and other access from the files of an existing one."""
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(name, 0o600)


class Store:
    """The SQLite store; `Store.in_dir(data_dir)` opens `<data_dir>/wakegate.db`."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        _owner_only(self.path)
        self._lock = threading.RLock()
        self._depth = 0
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            self._db.execute("PRAGMA busy_timeout = 5000")
            mode = self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"{self.path}: cannot use WAL journal mode (got {mode})")
            self._db.execute("PRAGMA synchronous = NORMAL")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise StoreError(f"{self.path}: {exc}") from None
        except BaseException:
            self._db.close()
            raise

    @classmethod
    def in_dir(cls, data_dir: str | os.PathLike[str]) -> Store:
        return cls(Path(data_dir) / DB_FILENAME)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def schema_version(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT version FROM schema_version").fetchone()
        return int(row[0])

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """All writes in the block commit together, or none if it raises.

        Nested blocks are savepoints: an inner block that raises undoes only its own
        writes (if the outer block catches the error). Other threads wait.
        """
        with self._lock:
            depth = self._depth
            savepoint = f"sp{depth}"
            self._db.execute("BEGIN IMMEDIATE" if depth == 0 else f"SAVEPOINT {savepoint}")
            self._depth += 1
            try:
                yield
                self._db.execute("COMMIT" if depth == 0 else f"RELEASE {savepoint}")
            except BaseException:
                if self._db.in_transaction:
                    if depth == 0:
                        self._db.execute("ROLLBACK")
                    else:
                        self._db.execute(f"ROLLBACK TO {savepoint}")
                        self._db.execute(f"RELEASE {savepoint}")
                raise
            finally:
                self._depth = depth

    def _migrate(self) -> None:
        with self.transaction():
            self._db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = self._db.execute("SELECT version FROM schema_version").fetchone()
            if row is None:
                self._db.execute("INSERT INTO schema_version (version) VALUES (0)")
                version = 0
            else:
                version = int(row[0])
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path}: schema version {version} is newer than this wakegate "
                    f"supports ({SCHEMA_VERSION}); upgrade wakegate"
                )
            for statements in MIGRATIONS[version:]:
                for statement in statements:
                    self._db.execute(statement)
            self._db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    # --- services --------------------------------------------------------------------

    def put_service(self, manifest: Mapping[str, Any]) -> int:
        """Store an applied Service manifest; its generation (bumped when `spec` changes)."""
        namespace, name = _service_key(manifest)
        text = _json(manifest)
        with self.transaction():
            row = self._db.execute(
                "SELECT manifest, generation FROM services WHERE namespace = ? AND name = ?",
                (namespace, name),
            ).fetchone()
            if row is None:
                generation = 1
            else:
                same_spec = json.loads(row[0]).get("spec") == manifest.get("spec")
                generation = int(row[1]) if same_spec else int(row[1]) + 1
            self._db.execute(
                "INSERT INTO services (namespace, name, manifest, generation, applied_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (namespace, name) DO UPDATE SET "
                "manifest = excluded.manifest, generation = excluded.generation, "
                "applied_at = excluded.applied_at",
                (namespace, name, text, generation, _now()),
            )
        return generation

    def get_service(self, namespace: str, name: str) -> StoredService | None:
        rows = self._query(
            "SELECT namespace, name, manifest, generation, applied_at FROM services "
            "WHERE namespace = ? AND name = ?",
            (namespace, name),
        )
        return _stored_service(rows[0]) if rows else None

    def list_services(self, namespace: str | None = None) -> list[StoredService]:
        """Services by namespace and name; every namespace's when `namespace` is None."""
        sql = "SELECT namespace, name, manifest, generation, applied_at FROM services"
        if namespace is None:
            rows = self._query(sql + " ORDER BY namespace, name")
        else:
            rows = self._query(sql + " WHERE namespace = ? ORDER BY name", (namespace,))
        return [_stored_service(row) for row in rows]

    def delete_service(self, namespace: str, name: str) -> bool:
        """Delete a Service with its revisions and status; False if it was not stored."""
        with self.transaction():
            found = self._db.execute(
                "DELETE FROM services WHERE namespace = ? AND name = ?", (namespace, name)
            ).rowcount
            self._db.execute(
                "DELETE FROM revisions WHERE namespace = ? AND service = ?", (namespace, name)
            )
            self._db.execute(
                "DELETE FROM service_status WHERE namespace = ? AND name = ?", (namespace, name)
            )
        return found > 0

    # --- revisions -------------------------------------------------------------------

    def add_revision(self, revision: Mapping[str, Any]) -> dict[str, Any]:
        """Store a Revision (`Revision.to_dict` form); what was stored.

        A missing `createdAt` is set to now. Revisions are immutable: adding one again
        with the same content is a no-op, with other content a StoreError.
        """
        try:
            namespace = str(revision["namespace"])
            service = str(revision["service"])
            name = str(revision["name"])
            generation = int(revision["generation"])
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError(f"not a revision: missing or bad {exc}") from None
        stored = dict(revision)
        stored["createdAt"] = stored.get("createdAt") or _now()
        with self.transaction():
            row = self._db.execute(
                "SELECT revision FROM revisions WHERE namespace = ? AND name = ?",
                (namespace, name),
            ).fetchone()
            if row is not None:
                existing = json.loads(row[0])
                if _without_created(existing) != _without_created(stored):
                    raise StoreError(
                        f"revision {namespace}/{name} already exists with different content"
                    )
                return existing
            self._db.execute(
                "INSERT INTO revisions (namespace, name, service, generation, revision, "
                "created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (namespace, name, service, generation, _json(stored), stored["createdAt"]),
            )
        return stored

    def get_revision(self, namespace: str, name: str) -> dict[str, Any] | None:
        rows = self._query(
            "SELECT revision FROM revisions WHERE namespace = ? AND name = ?", (namespace, name)
        )
        return json.loads(rows[0][0]) if rows else None

    def list_revisions(
        self, namespace: str | None = None, service: str | None = None
    ) -> list[dict[str, Any]]:
        """Revisions oldest first within each service; all of a namespace (or of every
        namespace when `namespace` is None) unless `service` names one."""
        where, params = [], []
        if namespace is not None:
            where.append("namespace = ?")
            params.append(namespace)
        if service is not None:
            where.append("service = ?")
            params.append(service)
        sql = "SELECT revision FROM revisions"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY namespace, service, generation, name"
        return [json.loads(row[0]) for row in self._query(sql, tuple(params))]

    def delete_revision(self, namespace: str, name: str) -> bool:
        with self.transaction():
            return (
                self._db.execute(
                    "DELETE FROM revisions WHERE namespace = ? AND name = ?", (namespace, name)
                ).rowcount
                > 0
            )

    # --- status ----------------------------------------------------------------------

    def put_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> bool:
        """Store a Service's status; False (nothing written) if the Service is not stored,
        so a late write cannot bring back the status of a deleted Service."""
        with self.transaction():
            written = self._db.execute(
                "INSERT INTO service_status (namespace, name, status, updated_at) "
                "SELECT ?, ?, ?, ? WHERE EXISTS "
                "(SELECT 1 FROM services WHERE namespace = ? AND name = ?) "
                "ON CONFLICT (namespace, name) DO UPDATE SET "
                "status = excluded.status, updated_at = excluded.updated_at",
                (namespace, name, _json(status), _now(), namespace, name),
            ).rowcount
        return written > 0

    def get_status(self, namespace: str, name: str) -> dict[str, Any] | None:
        rows = self._query(
            "SELECT status FROM service_status WHERE namespace = ? AND name = ?",
            (namespace, name),
        )
        return json.loads(rows[0][0]) if rows else None

    # --- settings --------------------------------------------------------------------

    def put_setting(self, key: str, value: Any) -> None:
        """Store a JSON-serialisable value under `key`."""
        with self.transaction():
            self._db.execute(
                "INSERT INTO settings (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, _json(value)),
            )

    def get_setting(self, key: str, default: Any = None) -> Any:
        rows = self._query("SELECT value FROM settings WHERE key = ?", (key,))
        return json.loads(rows[0][0]) if rows else default

    def delete_setting(self, key: str) -> bool:
        with self.transaction():
            return self._db.execute("DELETE FROM settings WHERE key = ?", (key,)).rowcount > 0


def _stored_service(row: tuple[Any, ...]) -> StoredService:
    namespace, name, manifest, generation, applied_at = row
    return StoredService(
        namespace=namespace,
        name=name,
        manifest=json.loads(manifest),
        generation=int(generation),
        applied_at=datetime.fromisoformat(applied_at),
    )


def _without_created(revision: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in revision.items() if k != "createdAt"}
