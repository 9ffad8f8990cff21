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
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2

from wakegate.ingress.model import Headers, Ingress, Path, Split
from wakegate.xds.common import length_delimited

Fields = dict[str, Any]
"""Keyword arguments of a protobuf message constructor, nested messages as dicts."""

RETRY_ON = "5xx,connect-failure,refused-stream,reset"
_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
_WEBSOCKET: Fields = {"upgrade_type": "websocket", "enabled": {"value": True}}

# The builders below return field maps (nested dicts) that protobuf constructors
# accept: one constructor call over a nested dict is about twice as fast as building
# every nested message object, and translating many rules is dominated by this.


def _duration(seconds: float) -> Fields:
    whole = int(seconds)
    return {"seconds": whole, "nanos": round((seconds - whole) * 1e9)}


def vhost_name(ingress: Ingress, rule_index: int) -> str:
    return f"{ingress.key}/rules[{rule_index}]"


def headers_to_set(headers: Headers) -> list[Fields]:
    """HeaderValueOptions that set each header, replacing any value the client sent."""
    return [
        {"header": {"key": name, "value": value}, "append_action": _OVERWRITE}
        for name, value in headers
    ]


def route_match(path: Path) -> Fields:
    """RouteMatch: the path as a prefix, and every header by exact value."""
    return {
        "prefix": path.path or "/",
        "headers": [
            {"name": name, "string_match": {"exact": value}} for name, value in path.headers
        ],
    }


def weighted_clusters(splits: Iterable[Split]) -> Fields:
    """WeightedCluster over the splits that get traffic; each sets its own headers."""
    return {
        "clusters": [
            {
                "name": split.backend.key,
                "weight": {"value": split.percent},
                "request_headers_to_add": headers_to_set(split.append_headers),
            }
            for split in splits
            if split.percent > 0
        ]
    }


def retry_policy(path: Path, default_timeout_s: float) -> Fields | None:
    """RetryPolicy: the retries the ingress asked for, and the time-to-first-byte timeout."""
    timeout_s = default_timeout_s if path.timeout_s is None else path.timeout_s
    retry = path.retry
    if retry is not None and retry.per_try_timeout_s is not None:
        timeout_s = retry.per_try_timeout_s
    attempts = retry.attempts if retry is not None else 0
    if attempts == 0 and timeout_s <= 0:
        return None
    policy: Fields = {"num_retries": {"value": attempts}}
    if attempts:
        policy["retry_on"] = RETRY_ON
    if timeout_s > 0:
        policy["per_try_timeout"] = _duration(timeout_s)
    return policy


def route_action(path: Path, default_timeout_s: float) -> Fields:
    """RouteAction; the zero route timeout switches off Envoy's 15 s default."""
    action: Fields = {
        "weighted_clusters": weighted_clusters(path.splits),
        "timeout": {},
        "upgrade_configs": [_WEBSOCKET],
    }
    if path.rewrite_host:
        action["host_rewrite_literal"] = path.rewrite_host
    policy = retry_policy(path, default_timeout_s)
    if policy is not None:
        action["retry_policy"] = policy
    return action


def forward_route(path: Path, name: str, default_timeout_s: float) -> Fields:
    if not any(split.percent > 0 for split in path.splits):
        # Envoy refuses a weighted cluster without weight, and with it the whole
        # route configuration; a path that sends traffic nowhere answers 503.
        return {"name": name, "match": route_match(path), "direct_response": {"status": 503}}
    return {
        "name": name,
        "match": route_match(path),
        "route": route_action(path, default_timeout_s),
        "request_headers_to_add": headers_to_set(path.append_headers),
    }


def redirect_route(path: Path, name: str, https_port: int | None) -> Fields:
    """Answer plain HTTP with a 301 to the same URL over HTTPS."""
    redirect: Fields = {
        "https_redirect": True,
        "response_code": rc.RedirectAction.MOVED_PERMANENTLY,
    }
    if https_port is not None:
        redirect["port_redirect"] = https_port
    return {"name": name, "match": route_match(path), "redirect": redirect}


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
