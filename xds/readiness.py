"""Status virtual hosts: which version of each ingress a gateway serves.

Readiness probes as in net-kourier and net-contour: with `GatewayConfig.readiness_probes`
each ingress gets one more virtual host, on `<hash>.<STATUS_DOMAIN>` (`ready_host`),
whose one route, exact path `/ready/<hash>`, is answered 200 by Envoy itself. The hash
digests everything the translator built for that ingress, so a gateway answers 200 for
an ingress's current hash exactly when it has taken the routes of that version of it.
One virtual host per ingress keeps a change to one ingress a change to one small
resource, also where route configurations are scoped by the Host's first label (the
hash). The routes match only on the cluster-local listener (the listener marker of
`routes.Reach.INTERNAL`), and the domain holds a label starting with an underscore,
which no KIngress host can (hosts are validated as DNS names), so it never collides
with one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from envoy.config.route.v3 import route_components_pb2 as rc

from wakegate.xds.routes import Fields, Reach, reach_matchers, virtual_host, virtual_host_entry

STATUS_DOMAIN = "_wakegate-status"
"""The domain under which readiness probes name their Host (`ready_host`)."""
STATUS_VHOST = "wakegate/status"
READY_PREFIX = "/ready/"


def ready_path(digest: str) -> str:
    return READY_PREFIX + digest


def ready_host(digest: str, domain: str = STATUS_DOMAIN) -> str:
    """The Host a readiness probe for `digest` sends."""
    return f"{digest}.{domain}"


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


def status_virtual_host(key: str, digest: str) -> rc.VirtualHost:
    """The status virtual host of one ingress."""
    return virtual_host(f"{STATUS_VHOST}/{key}", [ready_host(digest)], [status_route(key, digest)])


def status_virtual_host_entry(key: str, digest: str) -> bytes:
    """`status_virtual_host` framed as an entry of `RouteConfiguration.virtual_hosts`."""
    return virtual_host_entry(status_virtual_host(key, digest).SerializeToString())
