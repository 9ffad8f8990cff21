"""Envoy v3 bootstrap for a gateway that takes all its configuration over ADS.

Memory: a gateway holds a cluster per revision, and Envoy's per-cluster statistics
(about a hundred counters, gauges and histograms each) were most of its memory. The
bootstrap keeps every statistic outside revision clusters, and of each revision
cluster only what the autoscaler and the local stack read (`KEPT_CLUSTER_STATS`: its
requests in flight and its request count); those are created on first use, clusters
are set up on a worker only when it first routes to them, and memory that is freed
goes back to the system.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

XDS_CLUSTER = "xds_cluster"
ADMIN_SOCKET_MODE = 0o600

_TLS_CONTEXT = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
_HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_CONNECTIONS_MONITOR = (
    "type.googleapis.com/"
    "envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig"
)


@dataclass(frozen=True)
class XdsTls:
    """Files for mutual TLS to the control plane."""

    ca_file: str
    cert_file: str
    key_file: str
    server_name: str = ""
    """SNI and the name the control plane's certificate must carry; empty skips the name check."""


KEPT_CLUSTER_STATS = ("upstream_rq_active", "upstream_rq_total")
"""The statistics of each revision cluster a gateway keeps (`autoscaler.gateway_stats`)."""


def _none_of(words: set[str]) -> str:
    """An RE2 pattern (RE2 has no lookahead) matching every string that is not one of
    `words`: walk their trie, leaving it wherever a string can differ."""
    ends = "" in words
    firsts = sorted({word[0] for word in words if word})
    options = [] if ends else [""]
    if firsts:
        options.append("[^" + "".join(re.escape(c) for c in firsts) + "].*")
    elif ends:
        options.append(".+")
    for first in firsts:
        rest = {word[1:] for word in words if word and word[0] == first}
        options.append(re.escape(first) + _none_of(rest))
    return "(?:" + "|".join(options) + ")"


DROPPED_CLUSTER_STATS = rf"^cluster\.[^./]*/[^.]*\.{_none_of(set(KEPT_CLUSTER_STATS))}$"
"""Statistics of revision clusters (named `<namespace>/<name>:<port>`) but the kept ones."""
DROPPED_SCOPE_STATS = r"^http\.[^.]*\.rds\.[^./]*/.*$"
"""RDS statistics of each scope's route configuration (named `<routes>/<label>`); the
scoped routes' own statistics (`http.<listener>.scoped_rds.<routes>.`) stay."""


def memory_settings() -> dict[str, Any]:
    """Bootstrap fields that bound a gateway's memory (see the module docstring). Envoy
    matches each pattern against a statistic's whole name."""
    return {
        "stats_config": {
            "stats_matcher": {
                "exclusion_list": {
                    "patterns": [
                        {"safe_regex": {"regex": DROPPED_CLUSTER_STATS}},
                        {"safe_regex": {"regex": DROPPED_SCOPE_STATS}},
                    ]
                }
            }
        },
        "deferred_stat_options": {"enable_deferred_creation_stats": True},
        "cluster_manager": {"enable_deferred_cluster_creation": True},
        "memory_allocator_manager": {
            "bytes_to_release": 64 * 2**20,
            "memory_release_interval": "1s",
        },
    }


def _duration(seconds: float) -> str:
    return f"{seconds:g}s"


def _address(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def build_bootstrap(
    *,
    node_id: str,
    node_cluster: str,
    xds_host: str = "127.0.0.1",
    xds_port: int = 0,
    xds_socket: str | None = None,
    admin_port: int = 0,
    admin_host: str = "127.0.0.1",
    admin_socket: str | None = None,
    delta: bool = True,
    xds_tls: XdsTls | None = None,
    node_metadata: Mapping[str, Any] | None = None,
    connect_timeout: float = 1.0,
    xds_retry_base: float = 0.25,
    xds_retry_max: float = 5.0,
    max_downstream_connections: int = 50_000,
) -> dict[str, Any]:
    """A JSON-able Envoy bootstrap: listeners and clusters from ADS, admin on loopback.

    `admin_port` may be 0 to let Envoy pick one (see `--admin-address-path`). With
    `admin_socket`, admin listens on that unix socket instead, mode 0600: admin can
    stop and reconfigure the gateway and has no authentication of its own, so only
    its owner may reach it (on TCP loopback, any local user and any web page the user
    visits could post to it). With `xds_socket`, the control plane is reached on that
    unix socket rather than on `xds_host:xds_port`.
    """
    node: dict[str, Any] = {"id": node_id, "cluster": node_cluster}
    if node_metadata:
        node["metadata"] = dict(node_metadata)
    ads_source = {"ads": {}, "resource_api_version": "V3"}
    xds_address = (
        {"pipe": {"path": xds_socket}} if xds_socket else _address(xds_host, xds_port)
    )
    dns = not xds_socket and not _is_ip(xds_host)
    xds_cluster: dict[str, Any] = {
        "name": XDS_CLUSTER,
        "type": "STRICT_DNS" if dns else "STATIC",
        "connect_timeout": _duration(connect_timeout),
        "typed_extension_protocol_options": {
            _HTTP_OPTIONS: {
                "@type": f"type.googleapis.com/{_HTTP_OPTIONS}",
                "explicit_http_config": {
                    "http2_protocol_options": {
                        "connection_keepalive": {"interval": "30s", "timeout": "10s"},
                    }
                },
            }
        },
        "load_assignment": {
            "cluster_name": XDS_CLUSTER,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": xds_address}}]}],
        },
    }
    if not xds_socket:
        xds_cluster["upstream_connection_options"] = {
            "tcp_keepalive": {
                "keepalive_time": 30,
                "keepalive_interval": 10,
                "keepalive_probes": 3,
            }
        }
    if dns:
        xds_cluster["dns_lookup_family"] = "V4_PREFERRED"
    if xds_tls is not None:
        xds_cluster["transport_socket"] = _tls_socket(xds_tls)
    return {
        "node": node,
        "admin": {
            "address": {"pipe": {"path": admin_socket, "mode": ADMIN_SOCKET_MODE}}
            if admin_socket is not None
            else _address(admin_host, admin_port)
        },
        "dynamic_resources": {
            "ads_config": {
                "api_type": "DELTA_GRPC" if delta else "GRPC",
                "transport_api_version": "V3",
                "set_node_on_first_message_only": True,
                "grpc_services": [
                    {
                        "envoy_grpc": {
                            "cluster_name": XDS_CLUSTER,
                            "retry_policy": {
                                "retry_back_off": {
                                    "base_interval": _duration(xds_retry_base),
                                    "max_interval": _duration(xds_retry_max),
                                }
                            },
                        }
                    }
                ],
            },
            "lds_config": ads_source,
            "cds_config": ads_source,
        },
        "static_resources": {"clusters": [xds_cluster]},
        "overload_manager": {
            "resource_monitors": [
                {
                    "name": "envoy.resource_monitors.global_downstream_max_connections",
                    "typed_config": {
                        "@type": _CONNECTIONS_MONITOR,
                        "max_active_downstream_connections": max_downstream_connections,
                    },
                }
            ]
        },
        "layered_runtime": {
            "layers": [
                {"name": "static", "static_layer": {}},
                {"name": "admin", "admin_layer": {}},
            ]
        },
        **memory_settings(),
    }


def _tls_socket(tls: XdsTls) -> dict[str, Any]:
    validation: dict[str, Any] = {"trusted_ca": {"filename": tls.ca_file}}
    if tls.server_name:
        validation["match_typed_subject_alt_names"] = [
            {"san_type": "DNS", "matcher": {"exact": tls.server_name}}
        ]
    context: dict[str, Any] = {
        "@type": _TLS_CONTEXT,
        "common_tls_context": {
            "alpn_protocols": ["h2"],
            "tls_certificates": [
                {
                    "certificate_chain": {"filename": tls.cert_file},
                    "private_key": {"filename": tls.key_file},
                }
            ],
            "validation_context": validation,
        },
    }
    if tls.server_name:
        context["sni"] = tls.server_name
    return {"name": "envoy.transport_sockets.tls", "typed_config": context}
