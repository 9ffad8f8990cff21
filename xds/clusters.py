"""One cluster per backend that a route sends traffic to: EDS, or DNS-resolved.

A backend whose endpoints come from the control plane is an EDS cluster; one that is a
DNS name (a Kubernetes Service of type ExternalName) is a LOGICAL_DNS cluster with that
name and port inline, as net-kourier builds it: Envoy resolves the name itself (IPv4
first) and connects to the first address, re-resolving as the DNS TTL says.
"""

from __future__ import annotations

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2
from envoy.config.core.v3 import address_pb2, protocol_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2 as ec
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2 as hpo
from google.protobuf import wrappers_pb2

from wakegate.ingress.model import Endpoint
from wakegate.xds.common import ads_config_source, duration, length_delimited

HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def h2c_options() -> hpo.HttpProtocolOptions:
    """HTTP/2 with prior knowledge (h2c) to the backend."""
    explicit = hpo.HttpProtocolOptions.ExplicitHttpConfig
    config = explicit(http2_protocol_options=protocol_pb2.Http2ProtocolOptions())
    return hpo.HttpProtocolOptions(explicit_http_config=config)


def _circuit_breakers(max_requests: int) -> circuit_breaker_pb2.CircuitBreakers:
    # Envoy's defaults (1024 pending/active, 3 retries) would turn a burst held by the
    # activator into 503 overflows; the activator and the pods bound concurrency.
    limit = wrappers_pb2.UInt32Value(value=max_requests)
    return circuit_breaker_pb2.CircuitBreakers(
        thresholds=[
            circuit_breaker_pb2.CircuitBreakers.Thresholds(
                max_connections=limit,
                max_pending_requests=limit,
                max_requests=limit,
                max_retries=limit,
            )
        ]
    )


def build_cluster(
    name: str, *, http2: bool, connect_timeout_s: float, max_requests: int
) -> cluster_pb2.Cluster:
    cluster = cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.EDS,
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(eds_config=ads_config_source()),
        connect_timeout=duration(connect_timeout_s),
        lb_policy=cluster_pb2.Cluster.LEAST_REQUEST,
        circuit_breakers=_circuit_breakers(max_requests),
    )
    # HTTP/1.1 is Envoy's default upstream protocol; leaving it implicit keeps the
    # message small, which matters because a SotW CDS update carries every cluster
    # and Envoy parses, validates and hashes each one.
    if http2:
        cluster.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS].Pack(h2c_options())
    return cluster


def build_dns_cluster(
    name: str,
    target: Endpoint,
    *,
    http2: bool,
    connect_timeout_s: float,
    max_requests: int,
) -> cluster_pb2.Cluster:
    """A cluster that resolves `target.address` by DNS and connects to `target.port`."""
    address = address_pb2.Address(
        socket_address=address_pb2.SocketAddress(address=target.address, port_value=target.port)
    )
    cluster = cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.LOGICAL_DNS,
        dns_lookup_family=cluster_pb2.Cluster.V4_PREFERRED,
        respect_dns_ttl=True,
        connect_timeout=duration(connect_timeout_s),
        circuit_breakers=_circuit_breakers(max_requests),
        load_assignment=endpoint_pb2.ClusterLoadAssignment(
            cluster_name=name,
            endpoints=[
                ec.LocalityLbEndpoints(
                    lb_endpoints=[ec.LbEndpoint(endpoint=ec.Endpoint(address=address))]
                )
            ],
        ),
    )
    if http2:
        cluster.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS].Pack(h2c_options())
    return cluster


class ClusterEncoder:
    """Serialised clusters, made by prefixing the name to a pre-encoded remainder.

    Every cluster differs only in its name (field 1) and protocol, so encoding one
    is a bytes concatenation rather than a protobuf build.
    """

    def __init__(self, *, connect_timeout_s: float, max_requests: int) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.max_requests = max_requests
        self._tails = {
            http2: build_cluster(
                "", http2=http2, connect_timeout_s=connect_timeout_s, max_requests=max_requests
            ).SerializeToString(deterministic=True)
            for http2 in (False, True)
        }

    def encode(self, name: str, http2: bool) -> bytes:
        return length_delimited(1, name.encode()) + self._tails[http2]

    def encode_dns(self, name: str, target: Endpoint, http2: bool) -> bytes:
        return build_dns_cluster(
            name,
            target,
            http2=http2,
            connect_timeout_s=self.connect_timeout_s,
            max_requests=self.max_requests,
        ).SerializeToString(deterministic=True)
