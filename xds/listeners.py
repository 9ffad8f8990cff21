"""The gateway's listeners: external HTTP, cluster-local HTTP and external HTTPS.

Every listener runs one HTTP connection manager that takes its routes over RDS on
the ADS stream, speaks HTTP/1.1 and h2c (or h2 over TLS) downstream, allows
websocket upgrades and normalises paths like an edge proxy should. It adds no
`x-request-id` and no `x-envoy-*` headers (a client's own `x-request-id` passes
through): nothing reads them, and every request would pay for them.

The external and internal listeners name the same route configuration (or, for delta
gateways, the same scoped routes: see `scopes`), which Envoy then fetches, decodes and
builds once for both. Before routing, the internal listener
sets `INTERNAL_HEADER` on every request and the other listeners remove any copy a
client sent, so a route can be limited to one listener and cannot be reached from
the other by sending the header.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from envoy.config.common.mutation_rules.v3 import mutation_rules_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, extension_pb2
from envoy.config.listener.v3 import listener_components_pb2 as lc
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm,
)
from envoy.extensions.http.early_header_mutation.header_mutation.v3 import (
    header_mutation_pb2 as early_mutation_pb2,
)
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2
from google.protobuf import any_pb2, wrappers_pb2

from wakegate.ingress.model import Certificate, Ingress
from wakegate.xds.common import INTERNAL_HEADER, ads_config_source, duration
from wakegate.xds.scopes import scoped_routes

HCM_FILTER = "envoy.filters.network.http_connection_manager"
ROUTER_FILTER = "envoy.filters.http.router"
TLS_INSPECTOR = "envoy.filters.listener.tls_inspector"
TLS_TRANSPORT = "envoy.transport_sockets.tls"
EARLY_HEADER_MUTATION = "envoy.http.early_header_mutation.header_mutation"


def _any(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def listener_marking(internal: bool) -> extension_pb2.TypedExtensionConfig:
    """The early header mutation that runs before routing: the internal listener sets
    `INTERNAL_HEADER`, every other listener removes it."""
    if internal:
        mutation = mutation_rules_pb2.HeaderMutation(
            append=base_pb2.HeaderValueOption(
                header=base_pb2.HeaderValue(key=INTERNAL_HEADER, value="1"),
                append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
            )
        )
    else:
        mutation = mutation_rules_pb2.HeaderMutation(remove=INTERNAL_HEADER)
    return extension_pb2.TypedExtensionConfig(
        name=EARLY_HEADER_MUTATION,
        typed_config=_any(early_mutation_pb2.HeaderMutation(mutations=[mutation])),
    )


def http_connection_manager(
    route_config_name: str,
    *,
    stat_prefix: str,
    stream_idle_timeout_s: float,
    internal: bool = False,
    scoped: bool = False,
) -> hcm.HttpConnectionManager:
    """The connection manager; `scoped` takes its routes as scopes of `route_config_name`."""
    routes: dict[str, object]
    if scoped:
        routes = {"scoped_routes": scoped_routes(route_config_name)}
    else:
        source = ads_config_source()
        routes = {"rds": {"config_source": source, "route_config_name": route_config_name}}
    return hcm.HttpConnectionManager(
        stat_prefix=stat_prefix,
        codec_type=hcm.HttpConnectionManager.AUTO,
        early_header_mutation_extensions=[listener_marking(internal)],
        http_filters=[
            hcm.HttpFilter(
                name=ROUTER_FILTER,
                typed_config=_any(router_pb2.Router(suppress_envoy_headers=True)),
            )
        ],
        generate_request_id=wrappers_pb2.BoolValue(value=False),
        upgrade_configs=[hcm.HttpConnectionManager.UpgradeConfig(upgrade_type="websocket")],
        use_remote_address=wrappers_pb2.BoolValue(value=True),
        normalize_path=wrappers_pb2.BoolValue(value=True),
        merge_slashes=True,
        stream_idle_timeout=duration(stream_idle_timeout_s),
        **routes,  # type: ignore[arg-type]
    )


def _hcm_filter(manager: hcm.HttpConnectionManager) -> lc.Filter:
    return lc.Filter(name=HCM_FILTER, typed_config=_any(manager))


def _address(bind_address: str, port: int) -> address_pb2.Address:
    return address_pb2.Address(
        socket_address=address_pb2.SocketAddress(address=bind_address, port_value=port)
    )


def http_listener(
    name: str,
    *,
    bind_address: str,
    port: int,
    route_config_name: str,
    stream_idle_timeout_s: float,
    internal: bool = False,
    scoped: bool = False,
) -> listener_pb2.Listener:
    """A plain-HTTP listener; `internal` marks its requests as cluster-local, `scoped` has
    it take its routes as scopes of `route_config_name`."""
    manager = http_connection_manager(
        route_config_name,
        stat_prefix=name,
        stream_idle_timeout_s=stream_idle_timeout_s,
        internal=internal,
        scoped=scoped,
    )
    return listener_pb2.Listener(
        name=name,
        address=_address(bind_address, port),
        filter_chains=[lc.FilterChain(filters=[_hcm_filter(manager)])],
    )


@dataclass(frozen=True, slots=True)
class SNIChain:
    """One certificate served to TLS clients asking (by SNI) for `server_names`."""

    name: str
    server_names: tuple[str, ...]
    certificate: Certificate


def sni_chains(
    ingresses: Iterable[Ingress], certificates: Mapping[str, Certificate]
) -> tuple[list[SNIChain], dict[str, tuple[str, ...]]]:
    """One chain per TLS entry whose secret has a certificate, in the given order.

    A server name goes to the first entry that lists it (Envoy refuses two chains
    with the same match); an entry without hosts is the default chain. Returns the
    chains and, per ingress key, one-line problems.
    """
    claimed: dict[str, str] = {}
    chains: list[SNIChain] = []
    errors: dict[str, list[str]] = {}
    for ingress in ingresses:
        for index, tls in enumerate(ingress.tls):
            where = f"spec.tls[{index}]"
            secret = f"{tls.secret_namespace}/{tls.secret_name}"
            certificate = certificates.get(secret)
            if certificate is None:
                errors.setdefault(ingress.key, []).append(
                    f"{where}: secret {secret} has no certificate"
                )
                continue
            if certificate.problem:
                errors.setdefault(ingress.key, []).append(
                    f"{where}: secret {secret}: {certificate.problem}"
                )
                continue
            free = []
            for name in dict.fromkeys(host.lower() for host in tls.hosts) or ("",):
                if name in claimed:
                    host = repr(name) if name else "the default certificate"
                    errors.setdefault(ingress.key, []).append(
                        f"{where}.hosts: {host} is already served by ingress {claimed[name]}"
                    )
                else:
                    claimed[name] = ingress.key
                    free.append(name)
            if free:
                server_names = tuple(name for name in free if name)
                chains.append(SNIChain(f"{ingress.key}/tls[{index}]", server_names, certificate))
    return chains, {key: tuple(messages) for key, messages in errors.items()}


def downstream_tls_context(certificate: Certificate) -> tls_pb2.DownstreamTlsContext:
    return tls_pb2.DownstreamTlsContext(
        common_tls_context=tls_pb2.CommonTlsContext(
            alpn_protocols=["h2", "http/1.1"],
            tls_certificates=[
                common_pb2.TlsCertificate(
                    certificate_chain=base_pb2.DataSource(inline_string=certificate.cert_chain_pem),
                    private_key=base_pb2.DataSource(inline_string=certificate.private_key_pem),
                )
            ],
        )
    )


def tls_filter_chain(chain: SNIChain, manager: hcm.HttpConnectionManager) -> lc.FilterChain:
    return lc.FilterChain(
        name=chain.name,
        filter_chain_match=lc.FilterChainMatch(server_names=chain.server_names),
        transport_socket=base_pb2.TransportSocket(
            name=TLS_TRANSPORT, typed_config=_any(downstream_tls_context(chain.certificate))
        ),
        filters=[_hcm_filter(manager)],
    )


def https_listener(
    name: str,
    *,
    bind_address: str,
    port: int,
    route_config_name: str,
    chains: Iterable[SNIChain],
    stream_idle_timeout_s: float,
) -> listener_pb2.Listener:
    """The TLS listener: the TLS inspector reads SNI, which picks the filter chain."""
    manager = http_connection_manager(
        route_config_name, stat_prefix=name, stream_idle_timeout_s=stream_idle_timeout_s
    )
    return listener_pb2.Listener(
        name=name,
        address=_address(bind_address, port),
        listener_filters=[
            lc.ListenerFilter(
                name=TLS_INSPECTOR, typed_config=_any(tls_inspector_pb2.TlsInspector())
            )
        ],
        filter_chains=[tls_filter_chain(chain, manager) for chain in chains],
    )
