"""What the control plane serves a gateway for a host, and where the gateway differs.

`istioctl proxy-config` for wakegate: the listeners, routes (virtual hosts), clusters or
endpoints of a group's current snapshot, all of them or only those a host reaches
(its virtual hosts, the clusters their routes name, those clusters' endpoints, the
listeners whose route configuration holds such a virtual host). Given a gateway's own
Envoy admin `/config_dump?include_eds`, each resource is marked:

- `served`: the gateway runs exactly this resource;
- `stale`: it runs another version of it (an update not taken yet, or NACKed);
- `missing`: it does not have it (not sent yet, warming, or rejected whole);
- `rejected`: the gateway reports an error for it (Envoy's `error_state`);
- `extra`: the gateway still has a resource the control plane no longer serves.

Resources are compared as protobuf messages (the dump's JSON parsed back into the
same Envoy v3 type), so key order, default values and number formats do not matter.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm,
)
from google.protobuf import json_format
from google.protobuf.message import Message

from wakegate.xds.controlplane import ControlPlane
from wakegate.xds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, Resources
from wakegate.xds.scopes import scoped_name
from wakegate.xds.status import gateway_rows

KINDS: Mapping[str, str] = {
    "listeners": LISTENER,
    "routes": ROUTE,
    "clusters": CLUSTER,
    "endpoints": ENDPOINT,
}
_MESSAGES: Mapping[str, type[Message]] = {
    LISTENER: listener_pb2.Listener,
    ROUTE: route_pb2.RouteConfiguration,
    CLUSTER: cluster_pb2.Cluster,
    ENDPOINT: endpoint_pb2.ClusterLoadAssignment,
}
SERVED, STALE, MISSING, REJECTED, EXTRA = "served", "stale", "missing", "rejected", "extra"


def decode(type_url: str, body: bytes) -> Message:
    message = _MESSAGES[type_url]()
    message.ParseFromString(body)
    return message


REDACTED = "[redacted]"


def redact(value: Any) -> Any:
    """`value` with every TLS private key replaced, as Envoy's own config dump does."""
    if isinstance(value, dict):
        return {
            k: {"inline_string": REDACTED} if k == "private_key" else redact(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def to_dict(message: Message) -> dict[str, Any]:
    """The resource as proto3 JSON with its private keys redacted: it is shown, and may
    leave the machine (the controller's debug endpoint)."""
    return dict(redact(json_format.MessageToDict(message, preserving_proto_field_name=True)))


def domain_matches(pattern: str, host: str) -> bool:
    """Envoy's virtual host domain match: exact, `*`, `*.suffix`-style or `prefix*`."""
    pattern, host = pattern.lower(), host.lower()
    if pattern == "*" or pattern == host:
        return True
    if pattern.startswith("*"):
        return len(host) > len(pattern) - 1 and host.endswith(pattern[1:])
    if pattern.endswith("*"):
        return len(host) > len(pattern) - 1 and host.startswith(pattern[:-1])
    return False


def _host_only(host: str) -> str:
    return re.sub(r":\d+$", "", host.strip())


def _route_clusters(virtual_host: Any) -> list[str]:
    names: list[str] = []
    for route in virtual_host.routes:
        action = route.route
        if action.cluster:
            names.append(action.cluster)
        names.extend(w.name for w in action.weighted_clusters.clusters)
    return list(dict.fromkeys(names))


def _listener_route_configs(listener: Any) -> list[str]:
    names = []
    for chain in listener.filter_chains:
        for f in chain.filters:
            if f.typed_config.Is(hcm.HttpConnectionManager.DESCRIPTOR):
                manager = hcm.HttpConnectionManager()
                f.typed_config.Unpack(manager)
                if manager.rds.route_config_name:
                    names.append(manager.rds.route_config_name)
                elif manager.scoped_routes.name:
                    names.append(scoped_name(manager.scoped_routes.name, ""))
    return list(dict.fromkeys(names))


def _uses(listener_configs: Iterable[str], route_config: str) -> bool:
    """Whether a listener naming `listener_configs` (a scoped one by its scopes' common
    prefix) uses route configuration `route_config`."""
    return any(
        route_config == name or (name.endswith("/") and route_config.startswith(name))
        for name in listener_configs
    )


@dataclass
class GatewayResource:
    """One resource as the gateway reports it in its config dump."""

    version: str = ""
    body: dict[str, Any] | None = None
    error: str = ""


@dataclass
class GatewayDump:
    """A gateway's dynamic resources by type and name, from its config dump."""

    resources: dict[str, dict[str, GatewayResource]] = field(default_factory=dict)

    @classmethod
    def from_config_dump(cls, dump: Mapping[str, Any]) -> GatewayDump:
        out: dict[str, dict[str, GatewayResource]] = {t: {} for t in _MESSAGES}

        def put(type_url: str, name: str, item: Mapping[str, Any], body_key: str) -> None:
            entry = out[type_url].setdefault(name, GatewayResource())
            if body_key in item:
                entry.body = dict(item[body_key])
                entry.version = str(item.get("version_info", ""))
            error = item.get("error_state")
            if error:
                entry.error = str(error.get("details", "rejected"))

        for config in dump.get("configs", []):
            kind = str(config.get("@type", "")).rpartition(".")[2]
            if kind == "ListenersConfigDump":
                for item in config.get("dynamic_listeners", []):
                    active = item.get("active_state") or item.get("warming_state") or {}
                    put(LISTENER, item.get("name", ""), active, "listener")
                    if item.get("error_state"):
                        put(LISTENER, item.get("name", ""), item, "-")
            elif kind == "ClustersConfigDump":
                for item in config.get("dynamic_active_clusters", []):
                    put(CLUSTER, item["cluster"].get("name", ""), item, "cluster")
                for item in config.get("dynamic_warming_clusters", []):
                    entry = out[CLUSTER].setdefault(
                        item["cluster"].get("name", ""), GatewayResource()
                    )
                    entry.error = entry.error or "warming"
            elif kind == "RoutesConfigDump":
                for item in config.get("dynamic_route_configs", []):
                    name = (item.get("route_config") or {}).get("name", "")
                    put(ROUTE, name, item, "route_config")
            elif kind == "EndpointsConfigDump":
                for item in config.get("dynamic_endpoint_configs", []):
                    name = (item.get("endpoint_config") or {}).get("cluster_name", "")
                    put(ENDPOINT, name, item, "endpoint_config")
        return cls(out)

    def state(self, type_url: str, name: str, ours: Message) -> tuple[str, str]:
        """(state, detail) of our resource on this gateway."""
        theirs = self.resources.get(type_url, {}).get(name)
        if theirs is None or theirs.body is None:
            detail = theirs.error if theirs is not None else ""
            return (REJECTED if detail and detail != "warming" else MISSING), detail
        if theirs.error and theirs.error != "warming":
            return REJECTED, theirs.error
        if _same(type_url, ours, theirs.body):
            return SERVED, theirs.version
        return STALE, theirs.version


def _same(type_url: str, ours: Message, theirs: Mapping[str, Any]) -> bool:
    body = {k: v for k, v in theirs.items() if k != "@type"}
    try:
        parsed = json_format.ParseDict(body, _MESSAGES[type_url](), ignore_unknown_fields=True)
    except json_format.ParseError:
        return to_dict(ours) == redact(body)
    if type_url == ENDPOINT:
        # Envoy dumps endpoints from its host set, with defaults filled in (health
        # status, weights, overprovisioning): the addresses are what was sent.
        return _addresses(parsed) == _addresses(ours)
    # Envoy redacts private keys in its dump; compare with ours redacted alike.
    return to_dict(parsed) == to_dict(ours)


def _addresses(assignment: Any) -> list[str]:
    return sorted(
        f"{e.endpoint.address.socket_address.address}:"
        f"{e.endpoint.address.socket_address.port_value}"
        for group in assignment.endpoints
        for e in group.lb_endpoints
    )


@dataclass
class Entry:
    kind: str
    name: str
    resource: dict[str, Any]
    summary: dict[str, Any]
    gateway: dict[str, str] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "summary": self.summary}
        if self.gateway is not None:
            out["gateway"] = self.gateway
        out["resource"] = self.resource
        return out


def _serves(virtual_host: Any, hosts: Iterable[str]) -> bool:
    """Whether the virtual host serves one of `hosts` by name. A catch-all (`*`), such as
    the gate's, which only the gateway's own revision clusters reach, serves none."""
    return any(domain_matches(d, h) for d in virtual_host.domains if d != "*" for h in hosts)


def _summary(type_url: str, message: Any, hosts: set[str] | None) -> dict[str, Any]:
    if type_url == LISTENER:
        address = message.address.socket_address
        return {
            "address": f"{address.address}:{address.port_value}",
            "routeConfigs": _listener_route_configs(message),
        }
    if type_url == ROUTE:
        return {
            "virtualHosts": [
                {"name": vh.name, "domains": list(vh.domains), "clusters": _route_clusters(vh)}
                for vh in message.virtual_hosts
                if hosts is None or _serves(vh, hosts)
            ]
        }
    if type_url == CLUSTER:
        return {
            "type": cluster_pb2.Cluster.DiscoveryType.Name(message.type),
            "http2": bool(message.typed_extension_protocol_options),
        }
    return {"endpoints": _addresses(message)}


def select(
    resources: Resources, type_url: str, hosts: Iterable[str] | None = None
) -> dict[str, Message]:
    """The resources of one type that `hosts` reach (every one when None)."""
    decoded = {name: decode(type_url, body) for name, body in resources.get(type_url, {}).items()}
    if hosts is None:
        return decoded
    wanted = {_host_only(h) for h in hosts}
    routes = {name: decode(ROUTE, body) for name, body in resources.get(ROUTE, {}).items()}
    hit_routes: set[str] = set()
    clusters: set[str] = set()
    for name, config in routes.items():
        for vh in config.virtual_hosts:
            if _serves(vh, wanted):
                hit_routes.add(name)
                clusters.update(_route_clusters(vh))
    if type_url == ROUTE:
        keep = hit_routes
    elif type_url in (CLUSTER, ENDPOINT):
        keep = clusters
    else:
        keep = {
            n
            for n, msg in decoded.items()
            if any(_uses(_listener_route_configs(msg), rc) for rc in hit_routes)
        }
    return {name: msg for name, msg in decoded.items() if name in keep}


def proxy_config(
    resources: Resources,
    kind: str,
    *,
    hosts: Iterable[str] | None = None,
    dump: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """The entries of `kind` (listeners, routes, clusters, endpoints) for `hosts`, each
    marked against the gateway's config `dump` when one is given."""
    type_url = KINDS[kind]
    wanted = None if hosts is None else {_host_only(h) for h in hosts}
    chosen = select(resources, type_url, wanted)
    gateway = GatewayDump.from_config_dump(dump) if dump is not None else None
    entries = []
    for name in sorted(chosen):
        message = chosen[name]
        entry = Entry(kind, name, to_dict(message), _summary(type_url, message, wanted))
        if gateway is not None:
            state, detail = gateway.state(type_url, name, message)
            entry.gateway = {"state": state, "detail": detail}
        entries.append(entry.to_dict())
    if gateway is not None and wanted is None:
        for name in sorted(set(gateway.resources.get(type_url, {})) - set(chosen)):
            found = gateway.resources[type_url][name]
            if found.body is None and not found.error:
                continue
            entries.append(
                {
                    "name": name,
                    "summary": {},
                    "gateway": {"state": EXTRA, "detail": found.version},
                    "resource": redact(found.body or {}),
                }
            )
    return entries


def report(
    cp: ControlPlane,
    kind: str,
    *,
    host: str = "",
    ingress: str = "",
    dump: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """`proxy_config` of the control plane's current snapshot, for `host` and the hosts
    of the ingress keyed `ingress` (namespace/name); with every gateway's xDS state.

    Raises KeyError for an unknown kind or ingress.
    """
    if kind not in KINDS:
        raise KeyError(f"kind {kind!r}: expected one of {', '.join(KINDS)}")
    hosts: list[str] | None = [host] if host else None
    if ingress:
        found = [i for i in cp.ingresses() if i.key == ingress]
        if not found:
            raise KeyError(f"{ingress}: no such ingress")
        hosts = [*(hosts or []), *sorted({h for r in found[0].rules for h in r.hosts})]
    current = cp.cache.current(cp.group)
    resources = current[1].resources if current is not None else {}
    return {
        "kind": kind,
        "snapshot": current[1].version if current is not None else None,
        "hosts": hosts,
        "gateways": gateway_rows(cp.server.nodes(), cp.server.current()),
        "items": proxy_config(resources, kind, hosts=hosts, dump=dump),
    }
