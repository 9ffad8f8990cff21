"""The SQLite store: round trips, reopening the file, atomic transactions, cascading deletes."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from wakegate.reconciler.local.store import DB_FILENAME, SCHEMA_VERSION, Store, StoreError
from wakegate.serving.manifests import service_to_dict
from wakegate.serving.model import Service
from wakegate.serving.revision import Revision, next_revision
from wakegate.serving.validation import parse_service

HELLO = Path(__file__).resolve().parents[1] / "examples" / "helloworld" / "helloworld-go.yaml"


def hello(target: str = "World", name: str = "helloworld-go", namespace: str = "") -> Service:
    manifest = yaml.safe_load(HELLO.read_text())
    manifest["metadata"]["name"] = name
    if namespace:
        manifest["metadata"]["namespace"] = namespace
    manifest["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"] = target
    return parse_service(manifest)


def apply(store: Store, service: Service) -> Revision | None:
    """What `apply` does: a new revision if the template changed, and the manifest."""
    existing = [Revision.from_dict(r) for r in store.list_revisions(service.namespace)]
    revision = next_revision(service, existing, created_at=datetime.now(UTC))
    with store.transaction():
        if revision is not None:
            store.add_revision(revision.to_dict())
        store.put_service(service_to_dict(service))
    return revision


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store.in_dir(tmp_path / "data")
    yield opened
    opened.close()


def test_file_wal_and_schema_version(store: Store, tmp_path: Path) -> None:
    assert store.path == tmp_path / "data" / DB_FILENAME and store.path.is_file()
    assert store.schema_version == SCHEMA_VERSION == 1
    with sqlite3.connect(store.path) as other:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {row[0] for row in other.execute("SELECT name FROM sqlite_master")}
    assert {"services", "revisions", "service_status", "settings", "schema_version"} <= tables


def test_service_and_revision_round_trip(store: Store) -> None:
    service = hello()
    revision = apply(store, service)
    assert revision is not None and revision.name == "helloworld-go-00001"

    stored = store.get_service("default", "helloworld-go")
    assert stored is not None
    assert stored.manifest == service_to_dict(service)
    assert parse_service(stored.manifest) == service
    assert stored.generation == 1 and stored.key == "default/helloworld-go"
    assert (datetime.now(UTC) - stored.applied_at).total_seconds() < 60

    [loaded] = store.list_revisions("default", "helloworld-go")
    assert Revision.from_dict(loaded) == revision
    assert store.get_revision("default", revision.name) == revision.to_dict()
    assert store.get_service("default", "nope") is None


def test_generation_follows_spec_changes(store: Store) -> None:
    apply(store, hello("A"))
    assert apply(store, hello("A")) is None  # same template: no revision, same generation
    stored = store.get_service("default", "helloworld-go")
    assert stored is not None and stored.generation == 1
    second = apply(store, hello("B"))
    assert second is not None and second.name == "helloworld-go-00002"
    stored = store.get_service("default", "helloworld-go")
    assert stored is not None and stored.generation == 2
    names = [r["name"] for r in store.list_revisions("default", "helloworld-go")]
    assert names == ["helloworld-go-00001", "helloworld-go-00002"]


def test_listing_by_namespace_and_service(store: Store) -> None:
    apply(store, hello(name="b"))
    apply(store, hello(name="a"))
    apply(store, hello(name="a", namespace="prod"))
    assert [s.key for s in store.list_services()] == ["default/a", "default/b", "prod/a"]
    assert [s.key for s in store.list_services("prod")] == ["prod/a"]
    assert [r["name"] for r in store.list_revisions("default")] == ["a-00001", "b-00001"]
    assert [r["name"] for r in store.list_revisions("default", "b")] == ["b-00001"]
    assert len(store.list_revisions()) == 3


def test_reopening_loses_nothing(tmp_path: Path) -> None:
    with Store.in_dir(tmp_path) as store:
        apply(store, hello("A"))
        apply(store, hello("B"))
        assert store.put_status("default", "helloworld-go", {"url": "http://x", "ready": True})
        store.put_setting("domain", {"name": "example.com"})
        before = (store.list_services(), store.list_revisions("default"))
    with Store.in_dir(tmp_path) as store:
        assert (store.list_services(), store.list_revisions("default")) == before
        assert store.get_status("default", "helloworld-go") == {"url": "http://x", "ready": True}
        assert store.get_setting("domain") == {"name": "example.com"}
        assert store.schema_version == SCHEMA_VERSION


def test_failed_transaction_leaves_nothing(store: Store) -> None:
    apply(store, hello("A"))
    before = (store.list_services(), store.list_revisions("default"))
    service = hello("B")
    revision = next_revision(service, [Revision.from_dict(r) for r in store.list_revisions()])
    assert revision is not None
    with pytest.raises(RuntimeError, match="gateway said no"), store.transaction():
        store.add_revision(revision.to_dict())
        store.put_service(service_to_dict(service))
        store.put_setting("k", 1)
        raise RuntimeError("gateway said no")
    assert (store.list_services(), store.list_revisions("default")) == before
    assert store.get_setting("k") is None
    # The store still works after the rollback.
    assert apply(store, service) is not None
    assert len(store.list_revisions("default")) == 2


def test_nested_transaction_rolls_back_only_itself(store: Store) -> None:
    with store.transaction():
        store.put_setting("outer", 1)
        with pytest.raises(ValueError), store.transaction():
            store.put_setting("inner", 2)
            raise ValueError
        store.put_setting("after", 3)
    assert [store.get_setting(k) for k in ("outer", "inner", "after")] == [1, None, 3]


def test_delete_cascades_to_revisions_and_status(store: Store) -> None:
    apply(store, hello("A"))
    apply(store, hello("B"))
    apply(store, hello(name="other"))
    store.put_status("default", "helloworld-go", {"ready": True})
    store.put_status("default", "other", {"ready": False})
    assert store.delete_service("default", "helloworld-go")
    assert store.get_service("default", "helloworld-go") is None
    assert store.list_revisions("default", "helloworld-go") == []
    assert store.get_status("default", "helloworld-go") is None
    assert [s.name for s in store.list_services()] == ["other"]
    assert [r["name"] for r in store.list_revisions("default")] == ["other-00001"]
    assert store.get_status("default", "other") == {"ready": False}
    assert not store.delete_service("default", "helloworld-go")
    # A late status write for the deleted service does not bring it back.
    assert not store.put_status("default", "helloworld-go", {"ready": True})
    assert store.get_status("default", "helloworld-go") is None


def test_revisions_are_immutable(store: Store) -> None:
    revision = next_revision(hello("A"), [])
    assert revision is not None
    stored = store.add_revision(revision.to_dict())
    assert stored["createdAt"]  # filled in when missing
    assert store.add_revision(revision.to_dict()) == stored  # same content: no-op
    changed = next_revision(hello("B"), [])
    assert changed is not None and changed.name == revision.name
    with pytest.raises(StoreError, match="already exists with different content"):
        store.add_revision(changed.to_dict())
    with pytest.raises(StoreError, match="not a revision"):
        store.add_revision({"name": "x"})
    assert store.delete_revision("default", revision.name)
    assert store.list_revisions("default") == []


def test_status_and_settings(store: Store) -> None:
    apply(store, hello())
    status: dict[str, Any] = {"conditions": [{"type": "Ready", "status": "True"}]}
    assert store.put_status("default", "helloworld-go", status)
    status["url"] = "http://helloworld-go.default.example.com"
    assert store.put_status("default", "helloworld-go", status)
    assert store.get_status("default", "helloworld-go") == status
    assert store.get_setting("missing", 7) == 7
    store.put_setting("domain", "example.com")
    store.put_setting("domain", "kuberun.com")
    assert store.get_setting("domain") == "kuberun.com"
    assert store.delete_setting("domain") and store.get_setting("domain") is None


def test_schema_from_the_future_is_refused(tmp_path: Path) -> None:
    path = tmp_path / DB_FILENAME
    with Store(path) as store:
        apply(store, hello())
    with sqlite3.connect(path) as db:
        db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1} is newer"):
        Store(path)


def test_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / DB_FILENAME
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match=str(path)):
        Store(path)


async def test_usable_from_worker_threads(store: Store) -> None:
    services = [hello(name=f"svc{i}") for i in range(8)]
    await asyncio.gather(*(asyncio.to_thread(apply, store, s) for s in services))
    assert len(store.list_services()) == 8 and len(store.list_revisions("default")) == 8
