"""The gate: where `containerConcurrency` is enforced per pod, in every mode.

Knative enforces a revision's `containerConcurrency` in the queue-proxy inside every
pod, so the limit holds whoever sends the request. wakegate's local pods have no
queue-proxy; instead every request to a pod of a revision with a limit passes one Envoy
cluster, the revision's gate cluster, whose connection pool admits at most the limit per
pod and queues the rest:

- HTTP/1.1 carries one request per connection at a time, so the cluster's per-host
  circuit breaker `max_connections = containerConcurrency` bounds each pod's
  requests in flight; a request finding every connection to its pod busy waits in
  the pool for one.
- h2c multiplexes, so the cluster allows one connection per pod
  (`max_connections = 1`) with `max_concurrent_streams = containerConcurrency`.

The gate cluster sits behind the gate listener (loopback only, `GatewayConfig.gate_port`),
whose one virtual host routes by the `Knative-Serving-Namespace` and
`Knative-Serving-Revision` headers that the gateway sets on every split. Both paths to a
pod end there: in serve mode the revision's own cluster points at the gate listener,
and in proxy mode the activator forwards to it. So the requests the activator is still
forwarding when a revision switches to serve mode, and those the gateway then sends
directly, are counted by the same per-pod limit: no switch protocol is needed, and no
moment exists at which a pod could hold more than its limit.

Envoy's per-host limits are exact only within one worker thread (each worker has its
own connection pools, and a pool with no connection always opens one), so the local
gateway runs one worker (`--concurrency 1`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2
from envoy.config.core.v3 import address_pb2, protocol_pb2
from envoy.config.listener.v3 import listener_components_pb2 as lc
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm,
)
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2 as hpo
from google.protobuf import any_pb2, wrappers_pb2

from wakegate.ingress.model import Backend, Gate
from wakegate.serving.headers import NAMESPACE_HEADER, REVISION_HEADER
from wakegate.xds import resources
from wakegate.xds.clusters import HTTP_PROTOCOL_OPTIONS, build_cluster
from wakegate.xds.common import ads_config_source, duration
from wakegate.xds.endpoints import build_load_assignment
from wakegate.xds.routes import UNSENT_RETRIES, UNSENT_RETRY_ON

GATE = "gate"
"""The gate listener's and route configuration's name."""
GATE_BIND = "127.0.0.1"


def gate_cluster_name(gate: Gate) -> str:
    """`ns/revision:gate`: its stats (`ns/revision_gate`) are not taken for the revision's
    own cluster (`ns/revision_80`), so a request is counted once."""
    return f"{gate.namespace}/{gate.revision}:{GATE}"


def _any(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def gate_cluster(gate: Gate, *, connect_timeout_s: float, max_requests: int) -> cluster_pb2.Cluster:
    """The revision's gate cluster: at most `container_concurrency` requests per pod."""
    cluster = build_cluster(
        gate_cluster_name(gate),
        http2=False,
        connect_timeout_s=connect_timeout_s,
        max_requests=max_requests,
    )
    limit = gate.container_concurrency
    per_pod = circuit_breaker_pb2.CircuitBreakers.Thresholds(
        max_connections=wrappers_pb2.UInt32Value(value=1 if gate.http2 else limit)
    )
    cluster.circuit_breakers.per_host_thresholds.append(per_pod)
    if gate.http2:
        http2 = protocol_pb2.Http2ProtocolOptions(
            max_concurrent_streams=wrappers_pb2.UInt32Value(value=limit)
        )
        explicit = hpo.HttpProtocolOptions.ExplicitHttpConfig(http2_protocol_options=http2)
        options = hpo.HttpProtocolOptions(explicit_http_config=explicit)
        cluster.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS].Pack(options)
    return cluster


def gate_route(gate: Gate) -> rc.Route:
    """Requests of this revision (by the headers the gateway set) to its gate cluster.

    The gateway's route already bounds the time to the first byte, so this one sets no
    timeout; a request that never reached a pod is sent again, as on the gateway."""
    exact = rc.HeaderMatcher
    return rc.Route(
        name=gate.key,
        match=rc.RouteMatch(
            prefix="/",
            headers=[
                exact(name=NAMESPACE_HEADER, exact_match=gate.namespace),
                exact(name=REVISION_HEADER, exact_match=gate.revision),
            ],
        ),
        route=rc.RouteAction(
            cluster=gate_cluster_name(gate),
            timeout=duration(0),
            retry_policy=rc.RetryPolicy(
                retry_on=UNSENT_RETRY_ON,
                num_retries=wrappers_pb2.UInt32Value(value=UNSENT_RETRIES),
            ),
        ),
    )


def gate_route_configuration(gates: Mapping[str, Gate]) -> route_pb2.RouteConfiguration:
    routes = [gate_route(gates[key]) for key in sorted(gates)]
    return route_pb2.RouteConfiguration(
        name=GATE,
        virtual_hosts=[rc.VirtualHost(name=GATE, domains=["*"], routes=routes)],
    )


def gate_listener(port: int, *, stream_idle_timeout_s: float) -> listener_pb2.Listener:
    """The loopback-only listener in front of the gate clusters. It is the second hop of
    a request the gateway (or the activator) already accepted, so it leaves
    `X-Forwarded-For` and the path as they are."""
    manager = hcm.HttpConnectionManager(
        stat_prefix=GATE,
        codec_type=hcm.HttpConnectionManager.AUTO,
        rds=hcm.Rds(config_source=ads_config_source(), route_config_name=GATE),
        http_filters=[
            hcm.HttpFilter(name="envoy.filters.http.router", typed_config=_any(router_pb2.Router()))
        ],
        upgrade_configs=[hcm.HttpConnectionManager.UpgradeConfig(upgrade_type="websocket")],
        use_remote_address=wrappers_pb2.BoolValue(value=False),
        stream_idle_timeout=duration(stream_idle_timeout_s),
    )
    return listener_pb2.Listener(
        name=GATE,
        address=address_pb2.Address(
            socket_address=address_pb2.SocketAddress(address=GATE_BIND, port_value=port)
        ),
        filter_chains=[
            lc.FilterChain(
                filters=[
                    lc.Filter(
                        name="envoy.filters.network.http_connection_manager",
                        typed_config=_any(manager),
                    )
                ]
            )
        ],
    )


class GateResources:
    """The gate's listener, route configuration, clusters and endpoints, as serialised
    resources, rebuilt only for the gates that changed; what changed is kept for
    `take_changes` (the first call returns everything)."""

    def __init__(
        self, port: int, *, connect_timeout_s: float, max_requests: int, idle_timeout_s: float
    ) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.max_requests = max_requests
        listener = gate_listener(port, stream_idle_timeout_s=idle_timeout_s).SerializeToString()
        route = gate_route_configuration({}).SerializeToString()
        self._resources: dict[str, dict[str, bytes]] = {
            resources.CLUSTER: {},
            resources.ENDPOINT: {},
            resources.LISTENER: {GATE: listener},
            resources.ROUTE: {GATE: route},
        }
        self._gates: dict[str, Gate] = {}
        self._changes: dict[str, dict[str, bytes | None]] = {
            resources.LISTENER: {GATE: listener},
            resources.ROUTE: {GATE: route},
        }
        self._merged: dict[str, tuple[object, object, dict[str, bytes]]] = {}

    def sync(self, gates: Mapping[str, Gate]) -> None:
        """Take the current gates."""
        if gates == self._gates:
            return
        old, self._gates = self._gates, dict(gates)
        clusters = self._resources[resources.CLUSTER] = dict(self._resources[resources.CLUSTER])
        endpoints = self._resources[resources.ENDPOINT] = dict(self._resources[resources.ENDPOINT])
        changed_clusters = self._changes.setdefault(resources.CLUSTER, {})
        changed_endpoints = self._changes.setdefault(resources.ENDPOINT, {})
        for key in old.keys() - self._gates.keys():
            name = gate_cluster_name(old[key])
            del clusters[name], endpoints[name]
            changed_clusters[name] = changed_endpoints[name] = None
        for key, gate in self._gates.items():
            name = gate_cluster_name(gate)
            before = old.get(key)
            shape = (gate.http2, gate.container_concurrency)
            if before is None or (before.http2, before.container_concurrency) != shape:
                clusters[name] = changed_clusters[name] = gate_cluster(
                    gate, connect_timeout_s=self.connect_timeout_s, max_requests=self.max_requests
                ).SerializeToString()
            if before is None or before.endpoints != gate.endpoints:
                assignment = build_load_assignment(name, Backend(endpoints=gate.endpoints))
                endpoints[name] = changed_endpoints[name] = assignment.SerializeToString()
        if old.keys() != self._gates.keys():
            route = gate_route_configuration(self._gates).SerializeToString()
            self._resources[resources.ROUTE] = {GATE: route}
            self._changes.setdefault(resources.ROUTE, {})[GATE] = route

    def take_changes(self) -> dict[str, dict[str, bytes | None]]:
        """Type URL → name → new body, or None when it went away, since the last call."""
        out = {type_url: named for type_url, named in self._changes.items() if named}
        self._changes = {}
        return out

    def merge(
        self, out: resources.Resources, *, types: Iterable[str] = resources.TYPES_IN_ORDER
    ) -> resources.Resources:
        """`out` with the gate's resources of `types` added (the same mappings while
        neither changed)."""
        merged: dict[str, Mapping[str, bytes]] = dict(out)
        for type_url in types:
            extra = self._resources.get(type_url)
            if not extra:
                continue
            base = out.get(type_url, {})
            cached = self._merged.get(type_url)
            if cached is None or cached[0] is not base or cached[1] is not extra:
                cached = (base, extra, {**base, **extra})
                self._merged[type_url] = cached
            merged[type_url] = cached[2]
        return merged
