"""Virtual hosts, routes and route configurations built from ingress rules.

Knative semantics kept here:

- A path is a prefix match (`/` when empty), optionally with exact header matches.
- Splits become weighted clusters; a 0 % split is dropped so it never gets traffic.
- Headers are set, never appended (OVERWRITE_IF_EXISTS_OR_ADD), so a client cannot
  choose `Knative-Serving-Namespace`/`Knative-Serving-Revision` or any other header
  the ingress sets.
- Knative's request timeout is a time to the first response byte, not a cap on the
  whole exchange. Envoy's per-try timeout is exactly that (it stops once response
  headers arrive), so it carries the timeout while the route timeout is disabled and
  long streams and websockets live on.
- Retries only when the ingress asks for them.
"""

from __future__ import annotations

from collections.abc import Iterable

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.type.matcher.v3 import string_pb2
from google.protobuf import wrappers_pb2

from wakegate.ingress.model import Headers, Ingress, Path, Split
from wakegate.xds.common import duration, length_delimited

RETRY_ON = "5xx,connect-failure,refused-stream,reset"
_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
_NO_TIMEOUT = duration(0)
_WEBSOCKET = rc.RouteAction.UpgradeConfig(
    upgrade_type="websocket", enabled=wrappers_pb2.BoolValue(value=True)
)


def vhost_name(ingress: Ingress, rule_index: int) -> str:
    return f"{ingress.key}/rules[{rule_index}]"


def headers_to_set(headers: Headers) -> list[base_pb2.HeaderValueOption]:
    return [
        base_pb2.HeaderValueOption(
            header=base_pb2.HeaderValue(key=name, value=value), append_action=_OVERWRITE
        )
        for name, value in headers
    ]


def route_match(path: Path) -> rc.RouteMatch:
    return rc.RouteMatch(
        prefix=path.path or "/",
        headers=[
            rc.HeaderMatcher(name=name, string_match=string_pb2.StringMatcher(exact=value))
            for name, value in path.headers
        ],
    )


def weighted_clusters(splits: Iterable[Split]) -> rc.WeightedCluster:
    return rc.WeightedCluster(
        clusters=[
            rc.WeightedCluster.ClusterWeight(
                name=split.backend.key,
                weight=wrappers_pb2.UInt32Value(value=split.percent),
                request_headers_to_add=headers_to_set(split.append_headers),
            )
            for split in splits
            if split.percent > 0
        ]
    )


def retry_policy(path: Path, default_timeout_s: float) -> rc.RetryPolicy | None:
    """Retries the ingress asked for, plus the time-to-first-byte timeout."""
    timeout_s = default_timeout_s if path.timeout_s is None else path.timeout_s
    retry = path.retry
    if retry is not None and retry.per_try_timeout_s is not None:
        timeout_s = retry.per_try_timeout_s
    attempts = retry.attempts if retry is not None else 0
    if attempts == 0 and timeout_s <= 0:
        return None
    policy = rc.RetryPolicy(num_retries=wrappers_pb2.UInt32Value(value=attempts))
    if attempts:
        policy.retry_on = RETRY_ON
    if timeout_s > 0:
        policy.per_try_timeout.CopyFrom(duration(timeout_s))
    return policy


def route_action(path: Path, default_timeout_s: float) -> rc.RouteAction:
    action = rc.RouteAction(
        weighted_clusters=weighted_clusters(path.splits),
        timeout=_NO_TIMEOUT,
        upgrade_configs=[_WEBSOCKET],
    )
    if path.rewrite_host:
        action.host_rewrite_literal = path.rewrite_host
    policy = retry_policy(path, default_timeout_s)
    if policy is not None:
        action.retry_policy.CopyFrom(policy)
    return action


def forward_route(path: Path, name: str, default_timeout_s: float) -> rc.Route:
    return rc.Route(
        name=name,
        match=route_match(path),
        route=route_action(path, default_timeout_s),
        request_headers_to_add=headers_to_set(path.append_headers),
    )


def redirect_route(path: Path, name: str, https_port: int | None) -> rc.Route:
    """Answer plain HTTP with a 301 to the same URL over HTTPS."""
    redirect = rc.RedirectAction(
        https_redirect=True, response_code=rc.RedirectAction.MOVED_PERMANENTLY
    )
    if https_port is not None:
        redirect.port_redirect = https_port
    return rc.Route(name=name, match=route_match(path), redirect=redirect)


def rule_virtual_host(
    ingress: Ingress,
    rule_index: int,
    *,
    default_timeout_s: float,
    domains: Iterable[str] | None = None,
) -> rc.VirtualHost:
    """The virtual host that forwards one rule's traffic to its splits."""
    rule = ingress.rules[rule_index]
    name = vhost_name(ingress, rule_index)
    return rc.VirtualHost(
        name=name,
        domains=rule.hosts if domains is None else domains,
        routes=[
            forward_route(path, f"{name}/paths[{i}]", default_timeout_s)
            for i, path in enumerate(rule.paths)
        ],
    )


def redirect_virtual_host(
    ingress: Ingress,
    rule_index: int,
    *,
    https_port: int | None,
    domains: Iterable[str] | None = None,
) -> rc.VirtualHost:
    """The plain-HTTP virtual host of a rule whose ingress has `httpOption: Redirected`."""
    rule = ingress.rules[rule_index]
    name = vhost_name(ingress, rule_index)
    return rc.VirtualHost(
        name=name,
        domains=rule.hosts if domains is None else domains,
        routes=[
            redirect_route(path, f"{name}/paths[{i}]", https_port)
            for i, path in enumerate(rule.paths)
        ],
    )


def _route_configuration_head(name: str) -> route_pb2.RouteConfiguration:
    return route_pb2.RouteConfiguration(name=name)


def _route_configuration_tail() -> route_pb2.RouteConfiguration:
    # `host:port` in the authority selects the same virtual host as `host`;
    # a split's headers win over its path's when both set one.
    return route_pb2.RouteConfiguration(
        most_specific_header_mutations_wins=True, ignore_port_in_host_matching=True
    )


def route_configuration(
    name: str, virtual_hosts: Iterable[rc.VirtualHost]
) -> route_pb2.RouteConfiguration:
    """A whole RouteConfiguration message, built the ordinary way."""
    config = _route_configuration_head(name)
    config.MergeFrom(_route_configuration_tail())
    config.virtual_hosts.extend(virtual_hosts)
    return config


_VIRTUAL_HOSTS_FIELD = route_pb2.RouteConfiguration.VIRTUAL_HOSTS_FIELD_NUMBER
_TAIL = _route_configuration_tail().SerializeToString()


def virtual_host_entry(virtual_host: bytes) -> bytes:
    """An encoded VirtualHost framed as one entry of `RouteConfiguration.virtual_hosts`."""
    return length_delimited(_VIRTUAL_HOSTS_FIELD, virtual_host)


def route_configuration_bytes(name: str, entries: Iterable[bytes]) -> bytes:
    """A serialised RouteConfiguration assembled from `virtual_host_entry` parts.

    Fields are laid out in field-number order (name, virtual_hosts, flags), so the
    result equals the ordinary serialisation of `route_configuration`.
    """
    head = _route_configuration_head(name).SerializeToString()
    return b"".join((head, *entries, _TAIL))
