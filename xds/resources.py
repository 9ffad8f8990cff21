"""Envoy v3 resource type URLs and the serialised-resource representation.

Resources travel through the cache as serialised protobuf bytes: the translator
serialises each resource once, the cache versions it by content, and the server
wraps the same bytes in `Any` for every gateway without re-encoding.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
SCOPED_ROUTE = "type.googleapis.com/envoy.config.route.v3.ScopedRouteConfiguration"
"""Scopes (SRDS): which route configuration a request's Host selects, one per first label."""

# Order in which a consistent update reaches Envoy: clusters before the
# endpoints they use, listeners before the scopes and routes they name.
TYPES_IN_ORDER: tuple[str, ...] = (CLUSTER, ENDPOINT, LISTENER, SCOPED_ROUTE, ROUTE)

# Types a gateway is sent only after it answered the clusters they may name.
HELD_FOR_NEW_CLUSTERS: tuple[str, ...] = (LISTENER, SCOPED_ROUTE, ROUTE)

# Full-state types: a SotW response always carries every resource of the type, and
# a delta subscription without names asks for all of them.
FULL_STATE_TYPES = frozenset({LISTENER, CLUSTER, SCOPED_ROUTE})

# Types only delta gateways get (their listeners use scoped routes).
DELTA_ONLY_TYPES = frozenset({SCOPED_ROUTE})

SHORT_NAMES: Mapping[str, str] = {
    LISTENER: "lds",
    ROUTE: "rds",
    CLUSTER: "cds",
    ENDPOINT: "eds",
    SCOPED_ROUTE: "srds",
}

Resources = Mapping[str, Mapping[str, bytes]]
"""type URL → resource name → serialised message."""


def content_version(body: bytes) -> str:
    """A short, stable version string for one resource's serialised bytes."""
    return hashlib.sha256(body).hexdigest()[:16]
