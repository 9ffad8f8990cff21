"""ClusterLoadAssignments: where each backend's traffic goes right now."""

from __future__ import annotations

from envoy.config.core.v3 import address_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2 as ec
from envoy.config.endpoint.v3 import endpoint_pb2

from wakegate.ingress.model import Backend
from wakegate.xds.common import length_delimited


def locality_endpoints(backend: Backend | None) -> list[ec.LocalityLbEndpoints]:
    """The endpoints of a backend; none when it is unknown, so Envoy answers 503."""
    if backend is None or not backend.endpoints:
        return []
    return [
        ec.LocalityLbEndpoints(
            lb_endpoints=[
                ec.LbEndpoint(
                    endpoint=ec.Endpoint(
                        address=address_pb2.Address(
                            socket_address=address_pb2.SocketAddress(
                                address=endpoint.address, port_value=endpoint.port
                            )
                        )
                    )
                )
                for endpoint in backend.endpoints
            ]
        )
    ]


def build_load_assignment(
    cluster_name: str, backend: Backend | None
) -> endpoint_pb2.ClusterLoadAssignment:
    return endpoint_pb2.ClusterLoadAssignment(
        cluster_name=cluster_name, endpoints=locality_endpoints(backend)
    )


def encode_endpoints(backend: Backend | None) -> bytes:
    """The `endpoints` field of a ClusterLoadAssignment, encoded once per Backend value."""
    return build_load_assignment("", backend).SerializeToString()


def load_assignment_bytes(cluster_name: str, endpoints: bytes) -> bytes:
    """A serialised ClusterLoadAssignment from its name and `encode_endpoints` output."""
    return length_delimited(1, cluster_name.encode()) + endpoints
