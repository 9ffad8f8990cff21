"""What the translator generates for each ingress feature, decoded back into messages."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2, config_source_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2, scoped_route_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm,
)
from envoy.extensions.http.early_header_mutation.header_mutation.v3 import header_mutation_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2 as hpo

from wakegate.ingress.kingress import IngressError, parse_ingress
from wakegate.ingress.model import (
    TLS,
    Backend,
    BackendRef,
    Certificate,
    Endpoint,
    Headers,
    HTTPOption,
    Ingress,
    Path,
    Retry,
    RoutingState,
    Rule,
    Split,
    Visibility,
)
from wakegate.xds import resources
from wakegate.xds.clusters import HTTP_PROTOCOL_OPTIONS
from wakegate.xds.common import INTERNAL_HEADER
from wakegate.xds.readiness import (
    STATUS_DOMAIN,
    STATUS_VHOST,
    ingress_hash,
    ready_host,
    ready_path,
    status_virtual_host,
    status_virtual_host_entry,
)
from wakegate.xds.routes import virtual_host_entry
from wakegate.xds.translate import GatewayConfig, Translator, translate

OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD


def ref(name: str, port: int | str = 80, namespace: str = "default") -> BackendRef:
    return BackendRef(namespace, name, port)


def simple(
    name: str,
    *hosts: str,
    visibility: Visibility = Visibility.EXTERNAL_IP,
    namespace: str = "default",
    **path_fields: object,
) -> Ingress:
    path = Path(splits=(Split(ref(f"{name}-00001", namespace=namespace), 100),))
    return Ingress(
        namespace=namespace,
        name=name,
        rules=(
            Rule(
                hosts=hosts or (f"{name}.{namespace}.example.com",),
                paths=(replace(path, **path_fields),),
                visibility=visibility,
            ),
        ),
    )


def marks_internal(mgr: hcm.HttpConnectionManager) -> bool:
    """Whether a connection manager sets the internal marker before routing."""
    marking = header_mutation_pb2.HeaderMutation()
    assert len(mgr.early_header_mutation_extensions) == 1
    assert mgr.early_header_mutation_extensions[0].typed_config.Unpack(marking)
    (mutation,) = marking.mutations
    if mutation.HasField("append"):
        assert mutation.append.header.key == INTERNAL_HEADER
        assert mutation.append.append_action == OVERWRITE
        return True
    assert mutation.remove == INTERNAL_HEADER
    return False


def reachable(route: rc.Route, internal: bool) -> rc.Route | None:
    """The route as a listener sees it (without the marker match), or None if that
    listener's requests never match it."""
    seen = rc.Route()
    seen.CopyFrom(route)
    del seen.match.headers[:]
    for header in route.match.headers:
        if header.name != INTERNAL_HEADER:
            seen.match.headers.append(header)
        elif header.present_match != internal:
            return None
    return seen


def routes(out: resources.Resources, name: str) -> route_pb2.RouteConfiguration:
    """The routes listener `name` serves: its route configuration with only the routes
    its requests can match."""
    mgr = manager(listener(out, name).filter_chains[0])
    internal = marks_internal(mgr)
    config = route_pb2.RouteConfiguration.FromString(
        out[resources.ROUTE][mgr.rds.route_config_name]
    )
    assert list(config.request_headers_to_remove) == [INTERNAL_HEADER]
    view = route_pb2.RouteConfiguration()
    view.CopyFrom(config)
    del view.virtual_hosts[:]
    for host in config.virtual_hosts:
        kept = [seen for r in host.routes if (seen := reachable(r, internal)) is not None]
        if kept:
            copy = view.virtual_hosts.add()
            copy.CopyFrom(host)
            del copy.routes[:]
            copy.routes.extend(kept)
    return view


def vhost(out: resources.Resources, config: str, domain: str) -> rc.VirtualHost:
    matches = [v for v in routes(out, config).virtual_hosts if domain in v.domains]
    assert len(matches) == 1, f"{domain} in {config}: {len(matches)} virtual hosts"
    return matches[0]


def domains(out: resources.Resources, config: str) -> set[str]:
    return {d for v in routes(out, config).virtual_hosts for d in v.domains}


def listener(out: resources.Resources, name: str) -> listener_pb2.Listener:
    return listener_pb2.Listener.FromString(out[resources.LISTENER][name])


def manager(chain: listener_pb2.FilterChain) -> hcm.HttpConnectionManager:
    out = hcm.HttpConnectionManager()
    assert chain.filters[0].typed_config.Unpack(out)
    return out


def cluster(out: resources.Resources, name: str) -> cluster_pb2.Cluster:
    return cluster_pb2.Cluster.FromString(out[resources.CLUSTER][name])


def assignment(out: resources.Resources, name: str) -> endpoint_pb2.ClusterLoadAssignment:
    return endpoint_pb2.ClusterLoadAssignment.FromString(out[resources.ENDPOINT][name])


def run(*ingresses: Ingress, **state: object) -> resources.Resources:
    return translate(RoutingState(ingresses=ingresses, **state))  # type: ignore[arg-type]


# ---- hosts and visibility -------------------------------------------------------------


def test_rule_hosts_become_the_virtual_host_domains() -> None:
    out = run(simple("hello", "hello.default.example.com", "hello.example.org"))
    host = vhost(out, "external", "hello.default.example.com")
    assert list(host.domains) == ["hello.default.example.com", "hello.example.org"]
    assert host.name == "default/hello/rules[0]"
    assert routes(out, "external").ignore_port_in_host_matching


def test_no_catch_all_virtual_host() -> None:
    out = run(simple("hello"))
    for config in ("external", "internal"):
        assert "*" not in domains(out, config)
        assert len(routes(out, config).virtual_hosts) == 1


def test_empty_state_has_empty_route_configurations() -> None:
    out = run()
    assert set(out[resources.ROUTE]) == {"http"}
    assert not routes(out, "external").virtual_hosts
    assert set(out[resources.LISTENER]) == {"external", "internal"}
    assert out[resources.CLUSTER] == {}


def test_cluster_local_rules_are_served_only_internally() -> None:
    out = run(
        simple("pub", "pub.default.example.com"),
        simple("priv", "priv.default.svc.cluster.local", visibility=Visibility.CLUSTER_LOCAL),
    )
    assert domains(out, "external") == {"pub.default.example.com"}
    assert domains(out, "internal") == {"pub.default.example.com", "priv.default.svc.cluster.local"}


def test_plain_http_listeners_share_one_route_configuration() -> None:
    out = run(
        simple("pub", "pub.default.example.com"),
        simple("priv", "priv.default.svc.cluster.local", visibility=Visibility.CLUSTER_LOCAL),
    )
    assert set(out[resources.ROUTE]) == {"http"}
    config = route_pb2.RouteConfiguration.FromString(out[resources.ROUTE]["http"])
    assert [list(v.domains) for v in config.virtual_hosts] == [
        ["priv.default.svc.cluster.local"],
        ["pub.default.example.com"],
    ]
    private, public = (v.routes[0].match for v in config.virtual_hosts)
    assert [(h.name, h.present_match) for h in private.headers] == [(INTERNAL_HEADER, True)]
    assert not public.headers
    assert list(config.request_headers_to_remove) == [INTERNAL_HEADER]
    assert marks_internal(manager(listener(out, "internal").filter_chains[0]))
    assert not marks_internal(manager(listener(out, "external").filter_chains[0]))


def test_host_split_between_a_cluster_local_and_an_external_rule() -> None:
    """A ClusterLocal rule first in key order keeps the host internally; the external
    listener still serves it from the ExternalIP rule."""
    local = simple("a", "both.example.com", visibility=Visibility.CLUSTER_LOCAL)
    public = simple("b", "both.example.com", "b.example.com")
    translator = Translator()
    out = translator.translate(RoutingState(ingresses=(public, local)))
    inside = vhost(out, "internal", "both.example.com").routes[0]
    outside = vhost(out, "external", "both.example.com").routes[0]
    assert inside.route.weighted_clusters.clusters[0].name == "default/a-00001:80"
    assert outside.route.weighted_clusters.clusters[0].name == "default/b-00001:80"
    assert list(vhost(out, "internal", "b.example.com").domains) == ["b.example.com"]
    assert translator.errors == {
        "default/b": (
            "spec.rules[0].hosts: host 'both.example.com' is already served by ingress default/a",
        )
    }
    out = translator.translate(RoutingState(ingresses=(public,)))
    assert out == translate(RoutingState(ingresses=(public,)))
    assert list(vhost(out, "internal", "both.example.com").domains) == [
        "both.example.com",
        "b.example.com",
    ]


def test_split_host_redirects_externally_when_the_external_rule_does() -> None:
    local = simple("a", "both.example.com", visibility=Visibility.CLUSTER_LOCAL)
    public = replace(simple("b", "both.example.com"), http_option=HTTPOption.REDIRECTED)
    out = translate(
        RoutingState(ingresses=(local, public)), GatewayConfig(https_redirect_port=8443)
    )
    inside = vhost(out, "internal", "both.example.com").routes
    outside = vhost(out, "external", "both.example.com").routes
    assert [r.route.weighted_clusters.clusters[0].name for r in inside] == ["default/a-00001:80"]
    assert [(r.WhichOneof("action"), r.redirect.port_redirect) for r in outside] == [
        ("redirect", 8443)
    ]


# ---- matching, splitting, headers -------------------------------------------------------


def test_path_is_a_prefix_and_headers_match_exactly() -> None:
    ingress = Ingress(
        "default",
        "multi",
        (
            Rule(
                ("multi.example.com",),
                (
                    Path(
                        splits=(Split(ref("tagged"), 100),),
                        path="/api",
                        headers=(("Knative-Serving-Tag", "canary"),),
                    ),
                    Path(splits=(Split(ref("rest"), 100),)),
                ),
            ),
        ),
    )
    first, second = vhost(run(ingress), "external", "multi.example.com").routes
    assert first.match.prefix == "/api"
    assert len(first.match.headers) == 1
    assert first.match.headers[0].name == "Knative-Serving-Tag"
    assert first.match.headers[0].string_match.exact == "canary"
    assert second.match.prefix == "/"
    assert not second.match.headers
    assert first.route.weighted_clusters.clusters[0].name == "default/tagged:80"


def test_splits_become_weighted_clusters_and_zero_percent_is_dropped() -> None:
    splits = (Split(ref("a"), 70), Split(ref("b"), 30), Split(ref("old"), 0))
    ingress = Ingress("default", "w", (Rule(("w.example.com",), (Path(splits=splits),)),))
    out = run(ingress)
    weighted = vhost(out, "external", "w.example.com").routes[0].route.weighted_clusters
    assert [(c.name, c.weight.value) for c in weighted.clusters] == [
        ("default/a:80", 70),
        ("default/b:80", 30),
    ]
    assert set(out[resources.CLUSTER]) == {"default/a:80", "default/b:80"}


def test_headers_are_set_never_appended() -> None:
    split = Split(
        ref("hello-00001"),
        100,
        (("Knative-Serving-Namespace", "default"), ("Knative-Serving-Revision", "hello-00001")),
    )
    ingress = Ingress(
        "default",
        "h",
        (
            Rule(
                ("h.example.com",),
                (Path(splits=(split,), append_headers=(("Knative-Serving-Tag", "t"),)),),
            ),
        ),
    )
    out = run(ingress)
    route = vhost(out, "external", "h.example.com").routes[0]
    per_split = route.route.weighted_clusters.clusters[0].request_headers_to_add
    assert [(h.header.key, h.header.value, h.append_action) for h in per_split] == [
        ("Knative-Serving-Namespace", "default", OVERWRITE),
        ("Knative-Serving-Revision", "hello-00001", OVERWRITE),
    ]
    assert [(h.header.key, h.append_action) for h in route.request_headers_to_add] == [
        ("Knative-Serving-Tag", OVERWRITE)
    ]
    assert routes(out, "external").most_specific_header_mutations_wins


def split_headers(route: rc.Route) -> list[list[tuple[str, str]]]:
    return [
        [(h.header.key, h.header.value) for h in c.request_headers_to_add]
        for c in route.route.weighted_clusters.clusters
    ]


def route_headers(route: rc.Route) -> list[tuple[str, str, int]]:
    return [(h.header.key, h.header.value, h.append_action) for h in route.request_headers_to_add]


def revision_split(name: str, percent: int, namespace: str = "default") -> Split:
    return Split(
        ref(name, namespace=namespace),
        percent,
        (("Knative-Serving-Namespace", namespace), ("Knative-Serving-Revision", name)),
    )


def test_header_every_split_sets_alike_is_set_once_on_the_route() -> None:
    splits = (revision_split("r1", 60), revision_split("r2", 40), revision_split("old", 0, "x"))
    ingress = Ingress("default", "h", (Rule(("h.example.com",), (Path(splits=splits),)),))
    route = vhost(run(ingress), "external", "h.example.com").routes[0]
    assert route_headers(route) == [("Knative-Serving-Namespace", "default", OVERWRITE)]
    assert split_headers(route) == [
        [("Knative-Serving-Revision", "r1")],
        [("Knative-Serving-Revision", "r2")],
    ]


@pytest.mark.parametrize(
    "splits, path_headers",
    [
        ((revision_split("r1", 60), revision_split("r2", 40, "other")), ()),
        (
            (revision_split("r1", 60), revision_split("r2", 40)),
            (("knative-serving-namespace", "p"),),
        ),
        ((revision_split("r1", 100), revision_split("r2", 0)), ()),
    ],
    ids=["values-differ", "path-sets-it", "one-split-with-traffic"],
)
def test_headers_stay_on_the_splits(splits: tuple[Split, ...], path_headers: Headers) -> None:
    path = Path(splits=splits, append_headers=path_headers)
    ingress = Ingress("default", "h", (Rule(("h.example.com",), (path,)),))
    route = vhost(run(ingress), "external", "h.example.com").routes[0]
    assert [(k, v) for k, v, _ in route_headers(route)] == list(path_headers)
    assert split_headers(route) == [
        list(split.append_headers) for split in splits if split.percent > 0
    ]


def test_rewrite_host() -> None:
    out = run(simple("vanity", "www.vanity.example", rewrite_host="hello.default.svc"))
    action = vhost(out, "external", "www.vanity.example").routes[0].route
    assert action.host_rewrite_literal == "hello.default.svc"
    plain = vhost(run(simple("plain")), "external", "plain.default.example.com").routes[0]
    assert not plain.route.host_rewrite_literal


def test_path_without_traffic_answers_503() -> None:
    ingress = simple("idle")
    rule = ingress.rules[0]
    path = replace(rule.paths[0], splits=(Split(ref("idle-00001"), 0),))
    out = run(replace(ingress, rules=(replace(rule, paths=(path,)),)))
    route = vhost(out, "external", "idle.default.example.com").routes[0]
    assert route.WhichOneof("action") == "direct_response"
    assert route.direct_response.status == 503
    assert out[resources.CLUSTER] == {}


def test_rule_without_hosts_is_reported_not_served() -> None:
    ingress = simple("nohost")
    ingress = replace(ingress, rules=(replace(ingress.rules[0], hosts=()),))
    translator = Translator()
    out = translator.translate(RoutingState(ingresses=(ingress,)))
    assert not routes(out, "external").virtual_hosts
    assert translator.errors == {
        "default/nohost": ("spec.rules[0].hosts: no hosts, the rule is not served",)
    }


# ---- timeouts, retries, websockets -------------------------------------------------------


def test_default_timeout_is_a_time_to_first_byte_of_300s() -> None:
    action = vhost(run(simple("t")), "external", "t.default.example.com").routes[0].route
    assert action.HasField("timeout")
    assert action.timeout.ToTimedelta().total_seconds() == 0
    assert action.retry_policy.per_try_timeout.ToTimedelta().total_seconds() == 300
    # Without retries asked for, only requests that never reached a pod are retried.
    assert action.retry_policy.num_retries.value == 2
    assert action.retry_policy.retry_on == "connect-failure,refused-stream,reset-before-request"
    # ... on another endpoint than the one that failed, when there is one.
    [predicate] = action.retry_policy.retry_host_predicate
    assert predicate.name == "envoy.retry_host_predicates.previous_hosts"
    assert predicate.typed_config.type_url.endswith(".v3.PreviousHostsPredicate")
    assert action.retry_policy.host_selection_retry_max_attempts == 3


def test_path_timeout_and_configured_default() -> None:
    out = run(simple("t", timeout_s=12.5))
    action = vhost(out, "external", "t.default.example.com").routes[0].route
    assert action.retry_policy.per_try_timeout.ToTimedelta().total_seconds() == 12.5
    config = GatewayConfig(default_timeout_s=45)
    out = translate(RoutingState(ingresses=(simple("t"),)), config)
    action = vhost(out, "external", "t.default.example.com").routes[0].route
    assert action.retry_policy.per_try_timeout.ToTimedelta().total_seconds() == 45


def test_zero_timeout_means_none() -> None:
    out = run(simple("t", timeout_s=0.0))
    action = vhost(out, "external", "t.default.example.com").routes[0].route
    assert not action.retry_policy.HasField("per_try_timeout")
    assert action.HasField("timeout") and action.timeout.seconds == 0


def test_retries() -> None:
    out = run(simple("r", timeout_s=30.0, retry=Retry(attempts=3, per_try_timeout_s=2.0)))
    policy = vhost(out, "external", "r.default.example.com").routes[0].route.retry_policy
    assert policy.num_retries.value == 3
    assert set(policy.retry_on.split(",")) >= {"5xx", "connect-failure", "refused-stream"}
    assert policy.per_try_timeout.ToTimedelta().total_seconds() == 2.0
    out = run(simple("r", timeout_s=30.0, retry=Retry(attempts=2)))
    policy = vhost(out, "external", "r.default.example.com").routes[0].route.retry_policy
    assert (policy.num_retries.value, policy.per_try_timeout.seconds) == (2, 30)


def test_websockets_are_allowed() -> None:
    out = run(simple("ws"))
    action = vhost(out, "external", "ws.default.example.com").routes[0].route
    assert not action.upgrade_configs, "routes inherit the connection manager's upgrades"
    for name in ("external", "internal"):
        upgrades = manager(listener(out, name).filter_chains[0]).upgrade_configs
        assert [u.upgrade_type for u in upgrades] == ["websocket"]


# ---- listeners -------------------------------------------------------------------------


def test_http_listeners() -> None:
    config = GatewayConfig(external_port=18080, internal_port=18081, bind_address="127.0.0.1")
    out = translate(RoutingState(), config)
    for name, port in (("external", 18080), ("internal", 18081)):
        lis = listener(out, name)
        assert lis.name == name
        assert lis.address.socket_address.address == "127.0.0.1"
        assert lis.address.socket_address.port_value == port
        mgr = manager(lis.filter_chains[0])
        assert mgr.codec_type == hcm.HttpConnectionManager.AUTO
        assert mgr.rds.route_config_name == "http"
        assert marks_internal(mgr) == (name == "internal")
        assert mgr.rds.config_source.HasField("ads")
        assert mgr.rds.config_source.resource_api_version == config_source_pb2.V3
        assert [f.name for f in mgr.http_filters] == ["envoy.filters.http.router"]
        assert mgr.use_remote_address.value and mgr.normalize_path.value and mgr.merge_slashes
        assert mgr.stream_idle_timeout.seconds == 300


def with_tls(ingress: Ingress, secret: str, *hosts: str) -> Ingress:
    return replace(
        ingress, tls=(*ingress.tls, TLS(hosts or ingress.rules[0].hosts, "default", secret))
    )


def test_tls_filter_chain_per_entry_matched_by_sni() -> None:
    a = with_tls(simple("a"), "a-cert")
    b = with_tls(simple("b"), "b-cert")
    certificates = {
        "default/a-cert": Certificate("A", "KA"),
        "default/b-cert": Certificate("B", "KB"),
    }
    state = RoutingState(ingresses=(a, b, simple("plain")), certificates=certificates)
    out = translate(state, GatewayConfig(tls_port=9443))
    lis = listener(out, "external-tls")
    assert lis.address.socket_address.port_value == 9443
    assert lis.listener_filters[0].typed_config.Is(tls_inspector_pb2.TlsInspector.DESCRIPTOR)
    chains = {tuple(c.filter_chain_match.server_names): c for c in lis.filter_chains}
    assert set(chains) == {("a.default.example.com",), ("b.default.example.com",)}
    context = tls_pb2.DownstreamTlsContext()
    chains[("a.default.example.com",)].transport_socket.typed_config.Unpack(context)
    certificate = context.common_tls_context.tls_certificates[0]
    assert (certificate.certificate_chain.inline_string, certificate.private_key.inline_string) == (
        "A",
        "KA",
    )
    assert list(context.common_tls_context.alpn_protocols) == ["h2", "http/1.1"]
    assert manager(chains[("a.default.example.com",)]).rds.route_config_name == "external-tls"
    assert domains(out, "external-tls") == {"a.default.example.com", "b.default.example.com"}


def test_no_tls_listener_without_tls() -> None:
    out = run(simple("a"))
    assert "external-tls" not in out[resources.LISTENER]
    assert "external-tls" not in out[resources.ROUTE]


def test_missing_certificate_and_sni_conflict_are_reported() -> None:
    a = with_tls(simple("a"), "shared", "a.default.example.com")
    b = with_tls(simple("b"), "shared", "a.default.example.com", "b.default.example.com")
    c = with_tls(simple("c"), "absent")
    state = RoutingState(
        ingresses=(a, b, c), certificates={"default/shared": Certificate("S", "K")}
    )
    translator = Translator()
    out = translator.translate(state)
    names = [
        list(c.filter_chain_match.server_names) for c in listener(out, "external-tls").filter_chains
    ]
    assert names == [["a.default.example.com"], ["b.default.example.com"]]
    errors = translator.errors
    assert errors["default/b"] == (
        "spec.tls[0].hosts: 'a.default.example.com' is already served by ingress default/a",
    )
    assert errors["default/c"] == ("spec.tls[0]: secret default/absent has no certificate",)


def test_redirected_http_answers_with_https_redirect() -> None:
    ingress = replace(with_tls(simple("r"), "r-cert"), http_option=HTTPOption.REDIRECTED)
    state = RoutingState(
        ingresses=(ingress,), certificates={"default/r-cert": Certificate("C", "K")}
    )
    out = translate(state, GatewayConfig(https_redirect_port=8443))
    plain = vhost(out, "external", "r.default.example.com").routes[0]
    assert plain.WhichOneof("action") == "redirect"
    assert plain.redirect.https_redirect
    assert plain.redirect.response_code == rc.RedirectAction.MOVED_PERMANENTLY
    assert plain.redirect.port_redirect == 8443
    for config in ("external-tls", "internal"):
        served = vhost(out, config, "r.default.example.com").routes[0]
        assert served.WhichOneof("action") == "route"


# ---- clusters and endpoints --------------------------------------------------------------


def test_cluster_per_backend_over_eds() -> None:
    out = run(simple("hello"))
    c = cluster(out, "default/hello-00001:80")
    assert c.name == "default/hello-00001:80"
    assert c.type == cluster_pb2.Cluster.EDS
    assert c.eds_cluster_config.eds_config.HasField("ads")
    assert c.eds_cluster_config.eds_config.resource_api_version == config_source_pb2.V3
    assert c.lb_policy == cluster_pb2.Cluster.LEAST_REQUEST
    assert c.connect_timeout.seconds == 5
    # HTTP/1.1, Envoy's default upstream protocol, is left implicit.
    assert HTTP_PROTOCOL_OPTIONS not in c.typed_extension_protocol_options


def test_h2c_backend_gets_an_http2_cluster() -> None:
    ingress = simple("grpc")
    key = "default/grpc-00001:80"
    out = run(ingress, backends={key: Backend((Endpoint("10.0.0.1", 8080),), http2=True)})
    options = hpo.HttpProtocolOptions()
    cluster(out, key).typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS].Unpack(options)
    assert options.explicit_http_config.HasField("http2_protocol_options")


def test_endpoints_come_from_the_backend() -> None:
    key = "default/hello-00001:80"
    backend = Backend((Endpoint("10.0.0.1", 8012), Endpoint("10.0.0.2", 8013)))
    cla = assignment(run(simple("hello"), backends={key: backend}), key)
    assert cla.cluster_name == key
    addresses = [
        (e.endpoint.address.socket_address.address, e.endpoint.address.socket_address.port_value)
        for locality in cla.endpoints
        for e in locality.lb_endpoints
    ]
    assert addresses == [("10.0.0.1", 8012), ("10.0.0.2", 8013)]


def test_missing_backend_gives_an_empty_assignment() -> None:
    out = run(simple("hello"))
    key = "default/hello-00001:80"
    assert key in out[resources.CLUSTER]
    cla = assignment(out, key)
    assert cla.cluster_name == key
    assert not cla.endpoints


def test_every_routed_cluster_exists() -> None:
    ingresses = [simple(f"s{i}") for i in range(5)]
    out = run(*ingresses)
    named = {
        c.name
        for v in routes(out, "internal").virtual_hosts
        for r in v.routes
        for c in r.route.weighted_clusters.clusters
    }
    assert named == set(out[resources.CLUSTER]) == set(out[resources.ENDPOINT])


# ---- conflicts ---------------------------------------------------------------------------


def test_duplicate_host_goes_to_the_first_ingress_by_key() -> None:
    first = simple("a", "shared.example.com", "a.example.com")
    second = simple("b", "shared.example.com", "b.example.com")
    translator = Translator()
    out = translator.translate(RoutingState(ingresses=(second, first)))
    assert list(vhost(out, "external", "shared.example.com").domains) == [
        "shared.example.com",
        "a.example.com",
    ]
    assert list(vhost(out, "external", "b.example.com").domains) == ["b.example.com"]
    assert translator.errors == {
        "default/b": (
            "spec.rules[0].hosts: host 'shared.example.com' is already served by ingress default/a",
        )
    }


def test_duplicate_host_within_one_ingress() -> None:
    ingress = Ingress(
        "default",
        "twice",
        (
            Rule(("x.example.com",), (Path(splits=(Split(ref("a"), 100),)),)),
            Rule(("X.example.com",), (Path(splits=(Split(ref("b"), 100),)),)),
        ),
    )
    translator = Translator()
    out = translator.translate(RoutingState(ingresses=(ingress,)))
    assert len(routes(out, "external").virtual_hosts) == 1
    assert translator.errors["default/twice"] == (
        "spec.rules[1].hosts: host 'X.example.com' is already served by spec.rules[0]",
    )


def test_duplicate_ingress_key_uses_the_first() -> None:
    first = simple("a", "one.example.com")
    again = simple("a", "two.example.com")
    translator = Translator()
    out = translator.translate(RoutingState(ingresses=(first, again)))
    assert domains(out, "external") == {"one.example.com"}
    assert "given 2 times" in translator.errors["default/a"][0]


@pytest.mark.parametrize("http_option", list(HTTPOption))
def test_output_is_deterministic(http_option: HTTPOption) -> None:
    ingresses = [replace(simple(f"s{i}"), http_option=http_option) for i in range(20)]
    one = run(*ingresses)
    two = run(*reversed(ingresses))
    assert one == two


# ---- readiness probes: the status virtual host --------------------------------------------

PROBES = GatewayConfig(readiness_probes=True)


def ready_hash(translator: Translator, key: str) -> str:
    found = translator.readiness(key)
    assert found is not None, key
    return found[1]


def status_paths(out: resources.Resources, listener_name: str) -> list[str]:
    """The ready paths the status hosts answer on one listener, in virtual host order;
    each on the host its hash names."""
    paths = []
    for vhost in routes(out, listener_name).virtual_hosts:
        if not any(domain.endswith("." + STATUS_DOMAIN) for domain in vhost.domains):
            continue
        for route in vhost.routes:
            digest = route.match.path.removeprefix("/ready/")
            assert list(vhost.domains) == [ready_host(digest)]
            paths.append(route.match.path)
    return paths


def test_status_virtual_host_builder() -> None:
    built = status_virtual_host("default/a", "0a1b")
    assert built.name == f"{STATUS_VHOST}/default/a"
    assert list(built.domains) == [f"0a1b.{STATUS_DOMAIN}"] == [ready_host("0a1b")]
    (route,) = built.routes
    assert route.match.path == "/ready/0a1b" == ready_path("0a1b")
    assert [(h.name, h.present_match) for h in route.match.headers] == [(INTERNAL_HEADER, True)]
    assert route.direct_response.status == 200 and not route.HasField("route")
    assert route.name == "wakegate/status/default/a"
    entry = virtual_host_entry(built.SerializeToString())
    assert status_virtual_host_entry("default/a", "0a1b") == entry


def test_status_domain_is_not_a_valid_kingress_host() -> None:
    split = {"serviceName": "s", "serviceNamespace": "default", "servicePort": 80}
    obj = {
        "apiVersion": "networking.internal.knative.dev/v1alpha1",
        "kind": "Ingress",
        "metadata": {"name": "sneaky", "namespace": "default"},
        "spec": {"rules": [{"hosts": [STATUS_DOMAIN], "http": {"paths": [{"splits": [split]}]}}]},
    }
    with pytest.raises(IngressError, match="invalid host"):
        parse_ingress(obj)


def test_ingress_hash_is_a_function_of_the_key_and_the_parts() -> None:
    digest = ingress_hash("default/a", [b"ab", b"c"])
    assert digest == ingress_hash("default/a", [b"ab", b"c"])
    assert re.fullmatch("[0-9a-f]{32}", digest)
    assert digest != ingress_hash("default/b", [b"ab", b"c"])
    assert digest != ingress_hash("default/a", [b"a", b"bc"]), "parts are framed"
    assert digest != ingress_hash("default/a", [b"ab", b"c", b""])
    assert digest != ingress_hash("default/a", [b"ab", b"d"])


def test_status_virtual_host_only_with_readiness_probes() -> None:
    state = RoutingState(ingresses=(simple("a"),))
    translator = Translator()
    out = translator.translate(state)
    assert translator.readiness("default/a") is None
    assert status_paths(out, "internal") == []
    probed = Translator(PROBES)
    out = probed.translate(state)
    assert status_paths(out, "internal") == [ready_path(ready_hash(probed, "default/a"))]
    assert status_paths(out, "external") == [], "only the cluster-local listener answers"
    shared = route_pb2.RouteConfiguration.FromString(out[resources.ROUTE]["http"])
    digest = ready_hash(probed, "default/a")
    assert [list(v.domains) for v in shared.virtual_hosts][-1] == [ready_host(digest)]
    empty = Translator(PROBES).translate(RoutingState())
    assert status_paths(empty, "internal") == []


def test_ready_hash_changes_with_the_ingress_and_only_with_it() -> None:
    a, b = simple("a"), simple("b")
    translator = Translator(PROBES)
    out = translator.translate(RoutingState(ingresses=(a, b)))
    first = {key: ready_hash(translator, key) for key in ("default/a", "default/b")}
    assert first["default/a"] != first["default/b"]
    assert status_paths(out, "internal") == [ready_path(first[k]) for k in sorted(first)]
    assert translator.readiness("default/a") == (a, first["default/a"])

    # Another replica (other listener ports, another translator) builds the same hashes.
    other = Translator(
        GatewayConfig(external_port=1, internal_port=2, tls_port=3, readiness_probes=True)
    )
    other.translate(RoutingState(ingresses=(a, b)))
    assert {key: ready_hash(other, key) for key in first} == first

    # A new generation that serves something else changes that ingress's hash only.
    changed = replace(
        a, rules=(replace(a.rules[0], hosts=("a2.default.example.com",)),), generation=2
    )
    out = translator.translate(RoutingState(ingresses=(changed, b)))
    assert ready_hash(translator, "default/a") != first["default/a"]
    assert ready_hash(translator, "default/b") == first["default/b"]
    assert ready_path(ready_hash(translator, "default/a")) in status_paths(out, "internal")
    # A new generation that serves the same: the same hash.
    second = ready_hash(translator, "default/a")
    translator.translate(RoutingState(ingresses=(replace(changed, generation=3), b)))
    assert ready_hash(translator, "default/a") == second
    # Back to the first spec: back to the first hash.
    translator.translate(RoutingState(ingresses=(a, b)))
    assert ready_hash(translator, "default/a") == first["default/a"]
    # Endpoints are not part of it.
    backends = {"default/a-00001:80": Backend((Endpoint("10.0.0.1", 8080),))}
    translator.translate(RoutingState(ingresses=(a, b), backends=backends))
    assert ready_hash(translator, "default/a") == first["default/a"]

    out = translator.translate(RoutingState(ingresses=(b,)))
    assert translator.readiness("default/a") is None
    assert status_paths(out, "internal") == [ready_path(first["default/b"])]


def test_ready_hash_follows_certificates_conflicts_and_split_hosts() -> None:
    secure = with_tls(simple("a"), "a-cert")
    translator = Translator(PROBES)

    def hash_with(*ingresses: Ingress, **certificates: Certificate) -> str:
        certs = {f"default/{name}": cert for name, cert in certificates.items()}
        translator.translate(RoutingState(ingresses=ingresses, certificates=certs))
        return ready_hash(translator, "default/a")

    no_cert = hash_with(secure)
    with_cert = hash_with(secure, **{"a-cert": Certificate("A", "KA")})
    rotated = hash_with(secure, **{"a-cert": Certificate("A2", "KA2")})
    assert len({no_cert, with_cert, rotated}) == 3
    assert hash_with(secure) == no_cert, "a deleted certificate is part of it"

    # b loses its host to a (first by key); once a is gone b serves it.
    b = simple("b", "a.default.example.com")
    translator.translate(RoutingState(ingresses=(simple("a"), b)))
    losing = ready_hash(translator, "default/b")
    translator.translate(RoutingState(ingresses=(b,)))
    assert ready_hash(translator, "default/b") != losing

    # A host split between a's ClusterLocal rule and b's ExternalIP rule: b's hash
    # covers the shared virtual host, so it follows a's routes there.
    local = simple("a", "both.example.com", visibility=Visibility.CLUSTER_LOCAL)
    public = simple("b", "both.example.com", "b.example.com")
    translator.translate(RoutingState(ingresses=(local, public)))
    before = ready_hash(translator, "default/b")
    translator.translate(RoutingState(ingresses=(replace(local, generation=2), public)))
    assert ready_hash(translator, "default/b") == before
    moved = simple("a", "both.example.com", visibility=Visibility.CLUSTER_LOCAL, path="/v2")
    translator.translate(RoutingState(ingresses=(moved, public)))
    assert ready_hash(translator, "default/b") != before
    fresh = Translator(PROBES)
    fresh.translate(RoutingState(ingresses=(moved, public)))
    assert ready_hash(fresh, "default/b") == ready_hash(translator, "default/b")


# ---- the delta view: http as scoped routes ------------------------------------------------


def test_delta_view_scopes_http_by_the_first_label_of_each_host() -> None:
    multi = simple("a", "foo.default.example.com", "Bar.default.example.com")
    local = simple(
        "b", "b.default", "b.default.svc.cluster.local", visibility=Visibility.CLUSTER_LOCAL
    )
    translator = Translator()
    sotw = translator.translate(RoutingState(ingresses=(multi, local)))
    out = translator.delta_resources()

    scopes = {
        name: scoped_route_pb2.ScopedRouteConfiguration.FromString(body)
        for name, body in out[resources.SCOPED_ROUTE].items()
    }
    assert {
        name: (scope.route_configuration_name, [f.string_key for f in scope.key.fragments])
        for name, scope in scopes.items()
    } == {
        "http/foo": ("http/foo", ["foo"]),
        "http/bar": ("http/bar", ["bar"]),
        "http/b": ("http/b", ["b"]),
    }
    assert set(out[resources.ROUTE]) == set(scopes)
    whole = route_pb2.RouteConfiguration.FromString(sotw[resources.ROUTE]["http"])
    by_name = {v.name: v for v in whole.virtual_hosts}
    for name, body in out[resources.ROUTE].items():
        config = route_pb2.RouteConfiguration.FromString(body)
        assert config.name == name
        # Each scope holds the virtual hosts serving a host with its label, as built for
        # the whole route configuration, with its settings.
        assert [v.name for v in config.virtual_hosts] == [
            v.name
            for v in whole.virtual_hosts
            if any(d.split(".")[0].lower() == name.split("/")[1] for d in v.domains)
        ]
        assert all(v == by_name[v.name] for v in config.virtual_hosts)
        assert list(config.request_headers_to_remove) == [INTERNAL_HEADER]
        assert config.ignore_port_in_host_matching

    # Both plain listeners take them as the scopes of `http`, keyed by the first label.
    for name in ("external", "internal"):
        mgr = manager(listener(out, name).filter_chains[0])
        assert not mgr.HasField("rds")
        assert mgr.scoped_routes.name == "http"
        (fragment,) = mgr.scoped_routes.scope_key_builder.fragments
        extractor = fragment.header_value_extractor
        key = (extractor.name, extractor.element_separator, extractor.index)
        assert key == (":authority", ".", 0)
        assert mgr.scoped_routes.scoped_rds.scoped_rds_config_source.HasField("ads")
        assert mgr.scoped_routes.rds_config_source.HasField("ads")
        assert manager(listener(sotw, name).filter_chains[0]).rds.route_config_name == "http"
