"""The clusters and endpoints of the backends some route names, kept incrementally.

Clusters are reference-counted by the ingresses that name them: a cluster exists while
one does, and its encoded Cluster and ClusterLoadAssignment are rebuilt only when its
backend changes (by identity first, then by value). A state whose backends mapping is
the same object as before only looks at clusters that were just added. A backend Envoy
resolves by DNS gets a DNS cluster with its target inline, and no ClusterLoadAssignment.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping

from wakegate.ingress.model import Backend, Endpoint
from wakegate.xds.clusters import ClusterEncoder
from wakegate.xds.endpoints import encode_endpoints, load_assignment_bytes


class ClusterTable:
    """Encoded clusters and load assignments, by backend key."""

    def __init__(self, encoder: ClusterEncoder) -> None:
        self._encoder = encoder
        self._endpoint_bytes = functools.lru_cache(maxsize=4096)(encode_endpoints)
        self._refs: dict[str, int] = {}
        self._new: set[str] = set()
        self._last_backends: Mapping[str, Backend] | None = None
        self._seen_backend: dict[str, Backend | None] = {}
        self._shape: dict[str, tuple[bool, Endpoint | None]] = {}
        """Key → what its encoded Cluster was built from: h2c, and the DNS target."""
        self._clusters: dict[str, bytes] = {}
        self._endpoints: dict[str, bytes] = {}
        self._clusters_out: dict[str, bytes] = {}
        self._endpoints_out: dict[str, bytes] = {}
        self._clusters_dirty = self._endpoints_dirty = True

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
            self._clusters.pop(key, None)
            self._endpoints.pop(key, None)
            self._clusters_dirty = self._endpoints_dirty = True

    def sync(self, backends: Mapping[str, Backend]) -> None:
        """Re-encode what changed for the clusters in use."""
        if backends is not self._last_backends:
            keys: Iterable[str] = self._refs
            self._last_backends = backends
        else:
            keys = self._new
        seen = self._seen_backend
        missing = object()
        for key in keys:
            backend = backends.get(key)
            if seen.get(key, missing) is backend:
                continue
            seen[key] = backend
            http2 = backend is not None and backend.http2
            dns = backend.endpoints[0] if backend and backend.dns and backend.endpoints else None
            shape = (http2, dns)
            if self._shape.get(key) != shape:
                self._shape[key] = shape
                self._clusters[key] = (
                    self._encoder.encode(key, http2)
                    if dns is None
                    else self._encoder.encode_dns(key, dns, http2)
                )
                self._clusters_dirty = True
            if dns is not None:
                if self._endpoints.pop(key, None) is not None:
                    self._endpoints_dirty = True
                continue
            assignment = load_assignment_bytes(key, self._endpoint_bytes(backend))
            if self._endpoints.get(key) != assignment:
                self._endpoints[key] = assignment
                self._endpoints_dirty = True
        self._new.clear()

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
