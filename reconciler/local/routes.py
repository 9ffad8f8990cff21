"""A Service's Route: traffic targets → the ingress rule model, as Knative builds a KIngress.

Mirrors Knative's route reconciler (`route/traffic`, `route/resources/ingress.go`):
targets are flattened to revisions (`latestRevision` → the newest ready revision), the
main host splits traffic by percent with targets naming the same revision merged, each
tag gets its own host routed wholly to its revision, and every host exists on the
cluster-local listener as `{host}.{namespace}`, `.svc` and `.svc.{cluster domain}`;
services labelled cluster-local, or whose `config-domain` domain is the cluster's own,
get nothing else. Each split tells the activator its revision with
`Knative-Serving-Namespace` and `Knative-Serving-Revision`.

`RouteConfig` holds what the route reconciler reads from Knative's ConfigMaps: the
domain per route labels (`config-domain`), the domain and tag templates, the HTTP
option and the external URL scheme (`config-network`) and tag-header routing
(`config-features`).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from wakegate.ingress.model import (
    BackendRef,
    HTTPOption,
    Ingress,
    Path,
    Rule,
    Split,
    Visibility,
)
from wakegate.ingress.network_config import DEFAULT_NETWORK, HTTP_REDIRECTED, NetworkConfig
from wakegate.serving.conditions import ROUTES_READY, Condition, ConditionStatus
from wakegate.serving.domains import DomainConfig, default_domains
from wakegate.serving.headers import (
    DEFAULT_ROUTE_HEADER,
    NAMESPACE_HEADER,
    REVISION_HEADER,
    TAG_HEADER,
)
from wakegate.serving.model import SERVICE_PORT, Service
from wakegate.serving.revision import Revision, latest_created, latest_ready, service_revisions
from wakegate.serving.status import RouteStatus, TrafficStatus


@dataclass(frozen=True, slots=True)
class RouteConfig:
    """Knative's `config-domain`, `config-network` and `config-features`, as routes use them."""

    domains: DomainConfig = field(default_factory=default_domains)
    network: NetworkConfig = DEFAULT_NETWORK
    tag_header_routing: bool = False
    """Knative's `tag-header-based-routing`: on the main host a request carrying
    `Knative-Serving-Tag: <tag>` goes to that tag's revision."""

    @property
    def cluster_domain(self) -> str:
        return self.domains.cluster_domain

    def cluster_local(self, service: Service) -> bool:
        """Labelled cluster-local, or given the cluster's own domain by `config-domain`."""
        return service.cluster_local or self.domains.is_cluster_local(
            self.domains.lookup(service.labels)
        )

    def hostname(self, service: Service, tag: str = "") -> str:
        """The name a route's host starts with: the Service's, or its tag's."""
        return self.network.tag_host_name(service.name, tag)

    def cluster_local_hosts(self, service: Service, tag: str = "") -> tuple[str, ...]:
        base = f"{self.hostname(service, tag)}.{service.namespace}"
        return (base, f"{base}.svc", f"{base}.svc.{self.cluster_domain}")

    def external_host(self, service: Service, tag: str = "") -> str:
        return self.network.host(
            self.hostname(service, tag),
            service.namespace,
            self.domains.lookup(service.labels),
            service.annotations,
            service.labels,
        )

    def url(self, service: Service, tag: str = "") -> str:
        if self.cluster_local(service):
            return f"http://{self.cluster_local_hosts(service, tag)[2]}"
        return f"{self.network.default_external_scheme}://{self.external_host(service, tag)}"

    @property
    def http_option(self) -> HTTPOption:
        redirected = self.network.http_protocol == HTTP_REDIRECTED
        return HTTPOption.REDIRECTED if redirected else HTTPOption.ENABLED


DEFAULT_ROUTE_CONFIG = RouteConfig()


@dataclass(frozen=True, slots=True)
class _Target:
    revision: Revision
    percent: int


def _consolidate(targets: Iterable[_Target]) -> list[_Target]:
    """Merge targets naming the same revision, first occurrence's position kept."""
    merged: dict[str, _Target] = {}
    for target in targets:
        seen = merged.get(target.revision.name)
        percent = target.percent + (seen.percent if seen else 0)
        merged[target.revision.name] = _Target(target.revision, percent)
    out = list(merged.values())
    if len(out) == 1:
        out = [_Target(out[0].revision, 100)]
    return out


def _path(namespace: str, targets: Iterable[_Target], **extra: Any) -> Path:
    live = [t for t in targets if t.percent > 0]
    splits = tuple(
        Split(
            backend=BackendRef(namespace, t.revision.name, SERVICE_PORT),
            percent=t.percent,
            append_headers=(
                (NAMESPACE_HEADER, namespace),
                (REVISION_HEADER, t.revision.name),
            ),
        )
        for t in live
    )
    timeout = max(t.revision.template.timeout_seconds for t in live)
    return Path(splits=splits, timeout_s=float(timeout), **extra)


@dataclass(frozen=True, slots=True)
class _Resolved:
    """A spec traffic target with its revision found."""

    revision: Revision
    percent: int
    latest: bool
    tag: str


def _resolve(
    service: Service,
    own: list[Revision],
    ready: Collection[str] | None,
    failed: Collection[str],
) -> tuple[list[_Resolved], tuple[ConditionStatus, str] | None]:
    """Flatten the traffic targets to revisions, or say why one cannot be."""
    by_name = {r.name: r for r in own}
    newest_ready = latest_ready([r for r in own if r.name not in failed], ready)
    resolved: list[_Resolved] = []
    problem: tuple[ConditionStatus, str] | None = None
    for target in service.traffic:
        found: tuple[ConditionStatus, str]
        if target.latest_revision:
            if newest_ready is not None:
                resolved.append(_Resolved(newest_ready, target.percent, True, target.tag))
                continue
            newest = latest_created(own)
            if newest is not None and newest.name in failed:
                found = (
                    ConditionStatus.FALSE,
                    f'Configuration "{service.name}" does not have any ready Revision.',
                )
            else:
                found = (
                    ConditionStatus.UNKNOWN,
                    f'Configuration "{service.name}" is waiting for a Revision to become ready.',
                )
        else:
            revision = by_name.get(target.revision_name)
            if revision is None:
                found = (
                    ConditionStatus.FALSE,
                    f'Revision "{target.revision_name}" referenced in traffic not found.',
                )
            elif revision.name in failed:
                found = (
                    ConditionStatus.FALSE,
                    f'Revision "{revision.name}" failed to become ready.',
                )
            elif ready is not None and revision.name not in ready:
                found = (ConditionStatus.UNKNOWN, f'Revision "{revision.name}" is not yet ready.')
            else:
                resolved.append(_Resolved(revision, target.percent, False, target.tag))
                continue
        # As Knative does: a failure replaces what was found before, a wait does not.
        if problem is None or found[0] is ConditionStatus.FALSE:
            problem = found
    return resolved, problem


def _rules(service: Service, resolved: list[_Resolved], config: RouteConfig) -> tuple[Rule, ...]:
    namespace = service.namespace
    groups: dict[str, list[_Target]] = {"": []}
    for r in resolved:
        groups[""].append(_Target(r.revision, r.percent))
        if r.tag:
            groups[r.tag] = [_Target(r.revision, 100)]
    splits = {key: _consolidate(targets) for key, targets in groups.items()}
    tags = sorted(key for key in splits if key)

    visibilities = [Visibility.CLUSTER_LOCAL]
    if not config.cluster_local(service):
        visibilities.append(Visibility.EXTERNAL_IP)
    rules: list[Rule] = []
    for key in ["", *tags]:
        if not config.tag_header_routing:
            paths = [_path(namespace, splits[key])]
        elif key:
            paths = [_path(namespace, splits[key], append_headers=((TAG_HEADER, key),))]
        else:
            by_header = [_path(namespace, splits[t], headers=((TAG_HEADER, t),)) for t in tags]
            default = _path(namespace, splits[""], append_headers=((DEFAULT_ROUTE_HEADER, "true"),))
            paths = [*by_header, default]
        for visibility in visibilities:
            hosts = (
                config.cluster_local_hosts(service, key)
                if visibility is Visibility.CLUSTER_LOCAL
                else (config.external_host(service, key),)
            )
            rules.append(Rule(hosts=hosts, paths=tuple(paths), visibility=visibility))
    return tuple(rules)


def _traffic_status(
    service: Service, resolved: list[_Resolved], config: RouteConfig
) -> tuple[TrafficStatus, ...]:
    """`status.traffic`: one entry per target, merging only identical revision+tag pairs."""
    traffic: list[TrafficStatus] = []
    for r in resolved:
        url = config.url(service, r.tag) if r.tag else ""
        for i, seen in enumerate(traffic):
            if (seen.revision_name, seen.tag, seen.latest_revision) == (
                r.revision.name,
                r.tag,
                r.latest,
            ):
                traffic[i] = replace(seen, percent=seen.percent + r.percent)
                break
        else:
            traffic.append(TrafficStatus(r.revision.name, r.percent, r.latest, r.tag, url))
    return tuple(traffic)


def route_ingress(
    service: Service,
    revisions: Iterable[Revision],
    *,
    config: RouteConfig = DEFAULT_ROUTE_CONFIG,
    ready: Collection[str] | None = None,
    failed: Collection[str] = (),
) -> tuple[Ingress, RouteStatus]:
    """The ingress rules and route status for `service`'s traffic.

    `ready` names the revisions that have become ready (a revision scaled to zero stays
    ready; None means all), `failed` those that never will. When a target cannot be
    resolved, the status says why (reason `RevisionMissing`) and the returned ingress has
    no rules: the caller keeps what it applied before.
    """
    resolved, problem = _resolve(service, service_revisions(service, revisions), ready, failed)
    if problem is None:
        rules = _rules(service, resolved, config)
        traffic = _traffic_status(service, resolved, config)
        condition = Condition(ROUTES_READY, ConditionStatus.TRUE)
    else:
        rules, traffic = (), ()
        condition = Condition(ROUTES_READY, problem[0], "RevisionMissing", problem[1])
    route = RouteStatus(
        url=config.url(service),
        address_url=f"http://{service.name}.{service.namespace}.svc.{config.cluster_domain}",
        traffic=traffic,
        condition=condition,
    )
    ingress = Ingress(
        namespace=service.namespace, name=service.name, rules=rules, http_option=config.http_option
    )
    return ingress, route
