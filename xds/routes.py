"""Virtual hosts, routes and route configurations built from ingress rules.

Knative semantics kept here:

- A path is a prefix match (`/` when empty), optionally with exact header matches.
- Splits become weighted clusters; a 0 % split is dropped so it never gets traffic.
- Headers are set, never appended (OVERWRITE_IF_EXISTS_OR_ADD), so a client cannot
  choose `Knative-Serving-Namespace`/`Knative-Serving-Revision` or any other header
  the ingress sets. A header every split sets to the same value (typically
  `Knative-Serving-Namespace`) is set once on the route instead, when the path does
  not set it itself: the request upstream is the same, the message smaller and
  cheaper for Envoy to build.
- Websocket upgrades are allowed by the listeners' connection managers, which every
  route inherits.
- Knative's request timeout is a time to the first response byte, not a cap on the
  whole exchange. Envoy's per-try timeout is exactly that (it stops once response
  headers arrive), so it carries the timeout while the route timeout is disabled and
  long streams and websockets live on.
- Retries only when the ingress asks for them; a request that never reached an upstream
  (the connection was refused or reset before the request went out) is always tried
  again, on another endpoint when there is one (`previous_hosts`): a pod that has just
  died stays in the endpoints until the runtime notices, and only the requests it was
  handling may fail.

Both plain-HTTP listeners share one route configuration, so a change is decoded and
built once by Envoy. The internal listener marks every request with `INTERNAL_HEADER`
(the external one strips any client copy) and a route that only one listener may use
matches on the marker being present or absent; the route configuration removes the
marker before a request goes upstream.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from google.protobuf import any_pb2

from wakegate.ingress.model import Headers, Ingress, Path, Split
from wakegate.xds.common import INTERNAL_HEADER, length_delimited

Fields = dict[str, Any]
"""Keyword arguments of a protobuf message constructor, nested messages as dicts."""

RETRY_ON = "5xx,connect-failure,refused-stream,reset"
_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD

# The builders below return field maps (nested dicts) that protobuf constructors
# accept: one constructor call over a nested dict is about twice as fast as building
# every nested message object, and translating many rules is dominated by this.


class Reach(enum.Enum):
    """Which plain-HTTP listener a route answers on."""

    ANY = enum.auto()
    INTERNAL = enum.auto()
    """Only requests that came in on the internal (cluster-local) listener."""
    EXTERNAL = enum.auto()
    """Only requests that came in on the external listener."""


_MARKER: dict[Reach, Fields] = {
    Reach.INTERNAL: {"name": INTERNAL_HEADER, "present_match": True},
    Reach.EXTERNAL: {"name": INTERNAL_HEADER, "present_match": False},
}


def _duration(seconds: float) -> Fields:
    whole = int(seconds)
    return {"seconds": whole, "nanos": round((seconds - whole) * 1e9)}


def vhost_name(ingress: Ingress, rule_index: int) -> str:
    return f"{ingress.key}/rules[{rule_index}]"


def headers_to_set(headers: Iterable[tuple[str, str]]) -> list[Fields]:
    """HeaderValueOptions that set each header, replacing any value the client sent."""
    return [
        {"header": {"key": name, "value": value}, "append_action": _OVERWRITE}
        for name, value in headers
    ]


def reach_matchers(reach: Reach) -> list[Fields]:
    """HeaderMatchers that limit a route to one listener (none for `Reach.ANY`)."""
    marker = _MARKER.get(reach)
    return [] if marker is None else [marker]


def route_match(path: Path, reach: Reach = Reach.ANY) -> Fields:
    """RouteMatch: the path as a prefix, every header by exact value, and the listener
    marker when only one listener may use the route."""
    headers = [{"name": name, "string_match": {"exact": value}} for name, value in path.headers]
    marker = _MARKER.get(reach)
    if marker is not None:
        headers.append(marker)
    return {"prefix": path.path or "/", "headers": headers}


def _header_values(headers: Headers) -> dict[str, str | None]:
    """Lowercased header name → value, or None for a name given more than once."""
    values: dict[str, str | None] = {}
    for name, value in headers:
        key = name.lower()
        values[key] = None if key in values else value
    return values


def shared_split_headers(path: Path) -> Headers:
    """Headers that every split getting traffic sets once and to the same value, when
    there are several such splits and the path sets none of these headers itself.

    Setting them on the route instead of on each split sends the same request
    upstream: only the split-level value would have applied anyway.
    """
    splits = [split for split in path.splits if split.percent > 0]
    if len(splits) < 2:
        return ()
    first = splits[0].append_headers
    shared = {key: value for key, value in _header_values(first).items() if value is not None}
    for split in splits[1:]:
        if not shared:
            return ()
        values = _header_values(split.append_headers)
        shared = {key: value for key, value in shared.items() if values.get(key) == value}
    for name, _ in path.append_headers:
        shared.pop(name.lower(), None)
    return tuple(header for header in first if header[0].lower() in shared) if shared else ()


def weighted_clusters(splits: Iterable[Split], shared: Headers = ()) -> Fields:
    """WeightedCluster over the splits that get traffic; each sets its own headers,
    except the `shared` ones the route sets for all of them."""
    skip = {name.lower() for name, _ in shared}
    return {
        "clusters": [
            {
                "name": split.backend.key,
                "weight": {"value": split.percent},
                "request_headers_to_add": headers_to_set(
                    [h for h in split.append_headers if h[0].lower() not in skip]
                    if skip
                    else split.append_headers
                ),
            }
            for split in splits
            if split.percent > 0
        ]
    }


UNSENT_RETRY_ON = "connect-failure,refused-stream,reset-before-request"
UNSENT_RETRIES = 2
HOST_SELECTION_ATTEMPTS = 3
"""Picks per retry that avoid the endpoints already tried; with one endpoint, the last
pick is that endpoint again."""


def _previous_hosts() -> Fields:
    config = any_pb2.Any()
    config.Pack(previous_hosts_pb2.PreviousHostsPredicate())
    return {"name": "envoy.retry_host_predicates.previous_hosts", "typed_config": config}


_PREVIOUS_HOSTS = _previous_hosts()


def retry_policy(path: Path, default_timeout_s: float) -> Fields | None:
    """RetryPolicy: the retries the ingress asked for, and the time-to-first-byte timeout."""
    timeout_s = default_timeout_s if path.timeout_s is None else path.timeout_s
    retry = path.retry
    if retry is not None and retry.per_try_timeout_s is not None:
        timeout_s = retry.per_try_timeout_s
    attempts = retry.attempts if retry is not None else 0
    if attempts:
        policy: Fields = {"num_retries": {"value": attempts}, "retry_on": RETRY_ON}
    else:
        # A request that never reached a pod (one that had just stopped) is always
        # safe to send again, whatever the ingress asked for.
        policy = {"num_retries": {"value": UNSENT_RETRIES}, "retry_on": UNSENT_RETRY_ON}
    policy["retry_host_predicate"] = [_PREVIOUS_HOSTS]
    policy["host_selection_retry_max_attempts"] = HOST_SELECTION_ATTEMPTS
    if timeout_s > 0:
        policy["per_try_timeout"] = _duration(timeout_s)
    return policy


def route_action(path: Path, default_timeout_s: float, shared: Headers = ()) -> Fields:
    """RouteAction; the zero route timeout switches off Envoy's 15 s default."""
    action: Fields = {
        "weighted_clusters": weighted_clusters(path.splits, shared),
        "timeout": {},
    }
    if path.rewrite_host:
        action["host_rewrite_literal"] = path.rewrite_host
    policy = retry_policy(path, default_timeout_s)
    if policy is not None:
        action["retry_policy"] = policy
    return action


def forward_route(
    path: Path, name: str, default_timeout_s: float, reach: Reach = Reach.ANY
) -> Fields:
    match = route_match(path, reach)
    if not any(split.percent > 0 for split in path.splits):
        # Envoy refuses a weighted cluster without weight, and with it the whole
        # route configuration; a path that sends traffic nowhere answers 503.
        return {"name": name, "match": match, "direct_response": {"status": 503}}
    shared = shared_split_headers(path)
    return {
        "name": name,
        "match": match,
        "route": route_action(path, default_timeout_s, shared),
        "request_headers_to_add": headers_to_set((*path.append_headers, *shared)),
    }


def redirect_route(
    path: Path, name: str, https_port: int | None, reach: Reach = Reach.ANY
) -> Fields:
    """Answer plain HTTP with a 301 to the same URL over HTTPS."""
    redirect: Fields = {
        "https_redirect": True,
        "response_code": rc.RedirectAction.MOVED_PERMANENTLY,
    }
    if https_port is not None:
        redirect["port_redirect"] = https_port
    return {"name": name, "match": route_match(path, reach), "redirect": redirect}


def forward_routes(
    ingress: Ingress, rule_index: int, *, default_timeout_s: float, reach: Reach = Reach.ANY
) -> list[Fields]:
    """The routes that forward one rule's paths to their splits."""
    name = vhost_name(ingress, rule_index)
    return [
        forward_route(path, f"{name}/paths[{i}]", default_timeout_s, reach)
        for i, path in enumerate(ingress.rules[rule_index].paths)
    ]


def redirect_routes(
    ingress: Ingress, rule_index: int, *, https_port: int | None, reach: Reach = Reach.ANY
) -> list[Fields]:
    """The routes that redirect one rule's paths to HTTPS."""
    name = vhost_name(ingress, rule_index)
    return [
        redirect_route(path, f"{name}/paths[{i}]", https_port, reach)
        for i, path in enumerate(ingress.rules[rule_index].paths)
    ]


def virtual_host(name: str, domains: Iterable[str], routes: Sequence[Fields]) -> rc.VirtualHost:
    """A VirtualHost serving `domains` with `routes` (field maps), tried in order."""
    return rc.VirtualHost(name=name, domains=domains, routes=routes)


def rule_virtual_host(
    ingress: Ingress,
    rule_index: int,
    *,
    default_timeout_s: float,
    domains: Iterable[str] | None = None,
    reach: Reach = Reach.ANY,
) -> rc.VirtualHost:
    """The virtual host that forwards one rule's traffic to its splits."""
    return virtual_host(
        vhost_name(ingress, rule_index),
        ingress.rules[rule_index].hosts if domains is None else domains,
        forward_routes(ingress, rule_index, default_timeout_s=default_timeout_s, reach=reach),
    )


def redirected_virtual_host(
    ingress: Ingress,
    rule_index: int,
    *,
    default_timeout_s: float,
    https_port: int | None,
    domains: Iterable[str] | None = None,
) -> rc.VirtualHost:
    """The plain-HTTP virtual host of a rule whose ingress has `httpOption: Redirected`:
    the internal listener forwards, the external one redirects to HTTPS."""
    return virtual_host(
        vhost_name(ingress, rule_index),
        ingress.rules[rule_index].hosts if domains is None else domains,
        [
            *forward_routes(
                ingress, rule_index, default_timeout_s=default_timeout_s, reach=Reach.INTERNAL
            ),
            *redirect_routes(ingress, rule_index, https_port=https_port, reach=Reach.EXTERNAL),
        ],
    )


def _route_configuration_head(name: str) -> route_pb2.RouteConfiguration:
    return route_pb2.RouteConfiguration(name=name)


def _route_configuration_tail() -> route_pb2.RouteConfiguration:
    # The listener marker never reaches a backend; `host:port` in the authority
    # selects the same virtual host as `host`; a split's headers win over its
    # path's when both set one.
    return route_pb2.RouteConfiguration(
        request_headers_to_remove=[INTERNAL_HEADER],
        most_specific_header_mutations_wins=True,
        ignore_port_in_host_matching=True,
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

    Fields are laid out in field-number order (name, virtual_hosts, the rest), so the
    result equals the ordinary serialisation of `route_configuration`.
    """
    head = _route_configuration_head(name).SerializeToString()
    return b"".join((head, *entries, _TAIL))
