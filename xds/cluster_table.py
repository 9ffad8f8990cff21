"""The clusters and endpoints of the backends some route names, kept incrementally.

Clusters are reference-counted by the ingresses that name them: a cluster exists while
one does, and its encoded Cluster and ClusterLoadAssignment are rebuilt only when its
backend changes (by identity first, then by value). Backends come either as a whole
mapping (`sync`: a mapping that is the same object as before only looks at clusters
that were just added) or as changes (`update`); either way the table records which
clusters and load assignments changed, for `take_changes`. A backend Envoy resolves by
DNS gets a DNS cluster with its target inline, and no ClusterLoadAssignment.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping

from wakegate.ingress.model import Backend, Endpoint
from wakegate.xds.clusters import ClusterEncoder
from wakegate.xds.endpoints import encode_endpoints, load_assignment_bytes

Changed = dict[str, bytes | None]


class ClusterTable:
    """Encoded clusters and load assignments, by backend key."""

    def __init__(self, encoder: ClusterEncoder) -> None:
        self._encoder = encoder
        self._endpoint_bytes = functools.lru_cache(maxsize=4096)(encode_endpoints)
        self._refs: dict[str, int] = {}
        self._new: set[str] = set()
        self._backends: Mapping[str, Backend] = {}
        self._own_backends = False
        """Whether `_backends` is this table's own dict (else the caller's, read-only)."""
        self._seen_backend: dict[str, Backend | None] = {}
        self._shape: dict[str, tuple[bool, Endpoint | None]] = {}
        """Key → what its encoded Cluster was built from: h2c, and the DNS target."""
        self._clusters: dict[str, bytes] = {}
        self._endpoints: dict[str, bytes] = {}
        self._clusters_out: dict[str, bytes] = {}
        self._endpoints_out: dict[str, bytes] = {}
        self._clusters_dirty = self._endpoints_dirty = True
        self._cluster_changes: Changed = {}
        self._endpoint_changes: Changed = {}

    def acquire(self, keys: Iterable[str]) -> None:
        """One more user of each of these clusters."""
        refs = self._refs
        for key in keys:
            count = refs.get(key, 0)
            refs[key] = count + 1
            if not count:
                self._new.add(key)

    def release(self, keys: Iterable[str]) -> None:
        """One user fewer; a cluster nobody uses any more goes."""
        refs = self._refs
        for key in keys:
            count = refs[key] - 1
            if count:
                refs[key] = count
                continue
            del refs[key]
            self._new.discard(key)
            self._seen_backend.pop(key, None)
            self._shape.pop(key, None)
            if self._clusters.pop(key, None) is not None:
                self._cluster_changes[key] = None
            if self._endpoints.pop(key, None) is not None:
                self._endpoint_changes[key] = None
            self._clusters_dirty = self._endpoints_dirty = True

    def sync(self, backends: Mapping[str, Backend]) -> None:
        """Take `backends` as the whole set and re-encode what changed for the clusters in
        use."""
        if backends is not self._backends:
            self._backends = backends
            self._own_backends = False
            self._encode(self._refs)
        self.flush()

    def update(self, changes: Mapping[str, Backend | None]) -> None:
        """Change some backends (None removes one); call `flush` after the ingresses."""
        if not self._own_backends:
            self._backends = dict(self._backends)
            self._own_backends = True
        backends: dict[str, Backend] = self._backends  # type: ignore[assignment]
        for key, backend in changes.items():
            if backend is None:
                backends.pop(key, None)
            else:
                backends[key] = backend
        self._encode(key for key in changes if key in self._refs)

    def flush(self) -> None:
        """Encode the clusters that were just acquired."""
        self._encode(self._new)
        self._new.clear()

    def _encode(self, keys: Iterable[str]) -> None:
        backends = self._backends
        seen = self._seen_backend
        missing = object()
        for key in list(keys):
            backend = backends.get(key)
            if seen.get(key, missing) is backend:
                continue
            seen[key] = backend
            http2 = backend is not None and backend.http2
            dns = backend.endpoints[0] if backend and backend.dns and backend.endpoints else None
            shape = (http2, dns)
            if self._shape.get(key) != shape:
                self._shape[key] = shape
                cluster = self._clusters[key] = (
                    self._encoder.encode(key, http2)
                    if dns is None
                    else self._encoder.encode_dns(key, dns, http2)
                )
                self._cluster_changes[key] = cluster
                self._clusters_dirty = True
            if dns is not None:
                if self._endpoints.pop(key, None) is not None:
                    self._endpoint_changes[key] = None
                    self._endpoints_dirty = True
                continue
            assignment = load_assignment_bytes(key, self._endpoint_bytes(backend))
            if self._endpoints.get(key) != assignment:
                self._endpoints[key] = assignment
                self._endpoint_changes[key] = assignment
                self._endpoints_dirty = True

    def take_changes(self) -> tuple[Changed, Changed]:
        """Clusters and load assignments changed since the last call (None: removed)."""
        clusters, endpoints = self._cluster_changes, self._endpoint_changes
        self._cluster_changes, self._endpoint_changes = {}, {}
        return clusters, endpoints

    def clusters(self) -> dict[str, bytes]:
        """Name → encoded Cluster; the same mapping object while nothing changed."""
        if self._clusters_dirty:
            self._clusters_out = dict(self._clusters)
            self._clusters_dirty = False
        return self._clusters_out

    def endpoints(self) -> dict[str, bytes]:
        """Name → encoded ClusterLoadAssignment; the same object while nothing changed."""
        if self._endpoints_dirty:
            self._endpoints_out = dict(self._endpoints)
            self._endpoints_dirty = False
        return self._endpoints_out
