"""Every stored Revision, parsed once and kept in memory by Service.

Revisions are immutable and the local reconciler is the only one that writes them, so
the index is loaded from the store once and then follows what the reconciler adds and
deletes: a reconcile, an apply or a wait reads a Service's own revisions without
reading (or parsing) anyone else's. Reading them back depends on the serving
configuration (`admitted`), so a new configuration re-reads them on first use.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from wakegate.reconciler.local.store import Store
from wakegate.serving.config import ServingConfig
from wakegate.serving.revision import Revision


class RevisionIndex:
    def __init__(self, store: Store, config: ServingConfig) -> None:
        self._config = config
        self._stored: dict[str, list[dict[str, Any]]] = {}
        """Service key → its revisions as stored, oldest first."""
        self._parsed: dict[str, list[Revision]] = {}
        for data in store.list_revisions():
            self._stored.setdefault(_service_key(data), []).append(data)

    def configure(self, config: ServingConfig) -> None:
        """Read revisions with `config` from now on."""
        if config != self._config:
            self._config = config
            self._parsed.clear()

    def of(self, service_key: str) -> list[Revision]:
        """The Service's revisions, oldest first."""
        parsed = self._parsed.get(service_key)
        if parsed is None:
            stored = self._stored.get(service_key, [])
            parsed = [Revision.from_dict(d, self._config) for d in stored]
            self._parsed[service_key] = parsed
        return parsed

    def base_dirs(self, service_key: str) -> dict[str, str]:
        """Revision name → the directory its command's relative paths resolve under."""
        return {d["name"]: d.get("baseDir", ".") for d in self._stored.get(service_key, [])}

    def add(self, stored: Mapping[str, Any]) -> None:
        """A revision was stored (its `Revision.to_dict` form, with `baseDir`)."""
        key = _service_key(stored)
        own = [d for d in self._stored.get(key, []) if d["name"] != stored["name"]]
        own.append(dict(stored))
        own.sort(key=lambda d: (int(d["generation"]), d["name"]))
        self._stored[key] = own
        self._parsed.pop(key, None)

    def drop(self, service_key: str) -> None:
        """The Service was deleted, and its revisions with it."""
        self._stored.pop(service_key, None)
        self._parsed.pop(service_key, None)

    def all(self, namespace: str | None = None) -> Iterator[Revision]:
        """Every revision (of one namespace), by namespace, service and generation."""
        for key in sorted(self._stored):
            if namespace is None or key.partition("/")[0] == namespace:
                yield from self.of(key)


def _service_key(data: Mapping[str, Any]) -> str:
    return f"{data['namespace']}/{data['service']}"
