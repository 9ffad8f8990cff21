"""The status virtual host: which version of each ingress a gateway serves.

Readiness probes as in net-kourier and net-contour: with `GatewayConfig.readiness_probes`
the `http` route configuration gets one more virtual host, on `STATUS_DOMAIN`, with one
route per ingress: exact path `/ready/<hash>`, answered 200 by Envoy itself. The hash
digests everything the translator built for that ingress, so a gateway answers 200 for
an ingress's current hash exactly when it has taken a route configuration containing
that version of it. The routes match only on the cluster-local listener (the listener
marker of `routes.Reach.INTERNAL`), and the domain starts with an underscore, which no
KIngress host can (hosts are validated as DNS names), so it never collides with one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from envoy.config.route.v3 import route_components_pb2 as rc

from wakegate.xds.common import length_delimited
from wakegate.xds.routes import Fields, Reach, reach_matchers, virtual_host, virtual_host_entry

STATUS_DOMAIN = "_wakegate-status"
"""The Host of readiness probes."""
STATUS_VHOST = "wakegate/status"
READY_PREFIX = "/ready/"

_ROUTES_FIELD = rc.VirtualHost.ROUTES_FIELD_NUMBER
_HEAD = rc.VirtualHost(name=STATUS_VHOST, domains=[STATUS_DOMAIN]).SerializeToString()


def ready_path(digest: str) -> str:
    return READY_PREFIX + digest


def ingress_hash(key: str, parts: Iterable[bytes]) -> str:
    """A digest of an ingress key and the encoded parts built for it, in order.

    Each part is length-prefixed, so moving bytes from one part to the next changes
    the digest. Pure function of its input: replicas translating the same state agree.
    """
    digest = hashlib.sha256(key.encode())
    for part in parts:
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()[:32]


def status_route(key: str, digest: str) -> Fields:
    """The route answering 200 on `/ready/<digest>`, on the cluster-local listener only."""
    return {
        "name": f"{STATUS_VHOST}/{key}",
        "match": {"path": ready_path(digest), "headers": reach_matchers(Reach.INTERNAL)},
        "direct_response": {"status": 200},
    }


def status_virtual_host(routes: Iterable[tuple[str, str]]) -> rc.VirtualHost:
    """The status virtual host for (ingress key, hash) pairs, built the ordinary way."""
    return virtual_host(STATUS_VHOST, [STATUS_DOMAIN], [status_route(k, d) for k, d in routes])


def status_route_entry(key: str, digest: str) -> bytes:
    """One encoded route framed as an entry of `VirtualHost.routes`."""
    route = rc.Route(**status_route(key, digest))
    return length_delimited(_ROUTES_FIELD, route.SerializeToString())


def status_virtual_host_entry(route_entries: Iterable[bytes]) -> bytes:
    """The status virtual host assembled from `status_route_entry` parts, framed as an
    entry of `RouteConfiguration.virtual_hosts` (name, domains, routes: field order)."""
    return virtual_host_entry(_HEAD + b"".join(route_entries))
