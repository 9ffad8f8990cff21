"""RoutingState → Envoy resources, incrementally.

The translator keeps what it built for each ingress (encoded virtual hosts), each
cluster and each backend's endpoints, and on every call rebuilds only what changed:
a one-rule change re-encodes that ingress's virtual hosts and re-joins the route
configurations from cached bytes. Unchanged ingresses are recognised by identity
first (a state built from the previous one reuses its objects) and by equality
otherwise.

Route configurations: `http`, shared by the external and the cluster-local HTTP
listeners so that Envoy decodes and builds a change once, and `external-tls` (HTTPS
listener, present when some ingress has TLS). ClusterLocal rules are served only
internally; ExternalIP rules on every listener, as Knative does. In `http` a rule's
virtual host limits the routes one listener may not use to the other (see
`routes.Reach`).

Two views of the result. State-of-the-world gateways get `http` whole (`translate`,
`sotw_resources`). Delta gateways get `http` as scoped routes (see `scopes`): one
scope and one route configuration per first label of a host, holding the virtual
hosts that serve a host with that label (`delta_resources`); after the first,
`take_changes` hands over only the resources a change touched, so a change costs the
same however many ingresses there are. The translator can be fed whole states
(`translate`) or just what changed (`update`).

A host served by two rules goes to the first rule in ingress-key order, separately
for each listener; the loser is reported in `Translator.errors`. When a ClusterLocal
rule wins a host internally and a later ExternalIP rule wins it externally, the host
gets a virtual host of its own in `http` that holds both rules' routes, each limited
to its listener.

With `GatewayConfig.readiness_probes`, `http` also carries a status virtual host per
ingress (see `readiness`), named by a hash of everything built for that ingress (its
entries in both route configurations, the split-host virtual hosts it takes part in,
its TLS chains), kept up to date as incrementally as the rest.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import compress
from operator import is_not
from typing import Any

from wakegate.ingress.model import (
    Backend,
    Certificate,
    HTTPOption,
    Ingress,
    RoutingState,
    Visibility,
)
from wakegate.xds import resources
from wakegate.xds.cluster_table import ClusterTable
from wakegate.xds.clusters import ClusterEncoder
from wakegate.xds.listeners import SNIChain, http_listener, https_listener, sni_chains
from wakegate.xds.readiness import ingress_hash, ready_host, status_virtual_host_entry
from wakegate.xds.routes import (
    Reach,
    forward_routes,
    redirect_routes,
    redirected_virtual_host,
    route_configuration_bytes,
    rule_virtual_host,
    virtual_host,
    virtual_host_entry,
)
from wakegate.xds.scopes import host_label, scope_bytes, scoped_name

EXTERNAL = "external"
INTERNAL = "internal"
EXTERNAL_TLS = "external-tls"
HTTP_ROUTES = "http"
"""The route configuration of both plain-HTTP listeners."""
ROUTE_CONFIGS: tuple[str, ...] = (HTTP_ROUTES, EXTERNAL_TLS)

_HTTP, _TLS_RC = range(2)
"""Route configurations, indexes into ROUTE_CONFIGS."""
_EXT, _INT, _TLS = range(3)
"""Host claim tables: external HTTP, internal HTTP and TLS listener."""
_RC_OF_TABLE = (_HTTP, _HTTP, _TLS_RC)


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """How the gateway listens and the defaults it applies to every route."""

    external_port: int = 8080
    internal_port: int = 8081
    tls_port: int = 8443
    bind_address: str = "0.0.0.0"
    default_timeout_s: float = 300.0
    """Time to the first response byte when a path sets none (Knative's
    `revision-timeout-seconds` default); 0 disables it."""
    stream_idle_timeout_s: float = 300.0
    """A stream with no activity for this long is reset (as in net-kourier); 0 disables."""
    connect_timeout_s: float = 5.0
    https_redirect_port: int | None = None
    """Port put in `httpOption: Redirected` redirects; None keeps the default (443)."""
    max_upstream_requests: int = 100_000
    """Circuit-breaker limit per cluster for connections, pending and active requests."""
    readiness_probes: bool = False
    """Serve the status virtual host (`readiness`) on the cluster-local listener, so a
    prober can tell which version of each ingress a gateway serves."""
    gate_port: int | None = None
    """Loopback port of the gate listener (see `gate`), where revisions with a
    `containerConcurrency` get their per-pod limit; None without gates (cluster mode)."""


@dataclass(slots=True)
class _Slot:
    """One rule's claim on its hosts in one claim table."""

    table: int
    rank: tuple[str, int]
    """(ingress key, rule index): the lowest rank claiming a host wins it."""
    hosts: tuple[str, ...]
    names: tuple[str, ...]
    """The hosts lowercased, as Envoy compares them."""
    lost: tuple[str, ...] = ()


@dataclass(slots=True)
class _Rule:
    """One rule's virtual host in each route configuration that serves it."""

    index: int
    hosts: tuple[str, ...]
    names: tuple[str, ...]
    external: bool
    """Visibility ExternalIP: served on every listener, not only the internal one."""
    redirect: bool
    """Its external HTTP routes redirect to HTTPS."""
    full: dict[int, bytes]
    """Route configuration → the encoded `virtual_hosts` entry with every host."""
    entry: dict[int, bytes] = field(default_factory=dict)
    """What goes into each route configuration: `full`, or a re-encoding with only the
    hosts the rule keeps there, or nothing when it keeps none."""
    served: dict[int, tuple[str, ...]] = field(default_factory=dict)
    """The hosts in each `entry`."""


@dataclass(slots=True)
class _Built:
    """What one ingress contributes: virtual hosts, the clusters they use, problems."""

    ingress: Ingress
    slots: dict[tuple[int, int], _Slot]
    rules: dict[int, _Rule]
    clusters: frozenset[str]
    notes: tuple[str, ...]


def _host_names(hosts: Iterable[str]) -> tuple[str, ...]:
    return tuple(host.lower() for host in hosts)


def _unique_hosts(hosts: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Hosts without case-insensitive repeats (Envoy rejects those), and their names."""
    names = _host_names(hosts)
    if len(set(names)) == len(names):
        return hosts, names
    first = {name: host for name, host in reversed(tuple(zip(names, hosts, strict=True)))}
    return tuple(first.values()), tuple(first)


_SlotId = tuple[Any, ...]
"""A virtual host's place in `http`: (0, ingress key, rule index) for a rule, (1, host)
for a split host, (2, ingress key) for a status virtual host; sorting gives its order."""

_CHANGE_TYPES = (
    resources.CLUSTER,
    resources.ENDPOINT,
    resources.LISTENER,
    resources.SCOPED_ROUTE,
    resources.ROUTE,
)


class Translator:
    """Turns successive RoutingStates (or changes to them) into Resources, reusing
    unchanged work."""

    def __init__(self, config: GatewayConfig | None = None) -> None:
        self.config = config or GatewayConfig()
        self._cluster_table = ClusterTable(
            ClusterEncoder(
                connect_timeout_s=self.config.connect_timeout_s,
                max_requests=self.config.max_upstream_requests,
            )
        )
        self._last_ingresses: Sequence[Ingress] | None = None
        self._built: dict[str, _Built] = {}
        self._keys: list[str] = []
        self._parts: list[dict[str, bytes]] = [{}, {}]
        """Per route configuration: ingress key → its rules' entries, joined."""
        self._split_hosts: dict[str, bytes] = {}
        """Host name → the virtual host it gets when a ClusterLocal rule serves it
        internally and an ExternalIP rule externally."""
        self._claims: list[dict[str, list[tuple[str, int]]]] = [{}, {}, {}]
        self._conflicted: set[str] = set()
        self._noted: set[str] = set()
        self._duplicates: dict[str, int] = {}
        self._rc_bytes: list[bytes] = [b"", b""]
        self._rc_dirty = {_HTTP, _TLS_RC}
        self._tls_keys: set[str] = set()
        self._tls_dirty = True
        self._last_certificates: Mapping[str, Certificate] | None = None
        self._certificates: Mapping[str, Certificate] = {}
        self._tls_errors: dict[str, tuple[str, ...]] = {}
        self._tls_listener: bytes | None = None
        self._plain_listeners = self._build_plain_listeners(scoped=False)
        self._scoped_listeners = self._build_plain_listeners(scoped=True)
        self._probes = self.config.readiness_probes
        self._ready: dict[str, str] = {}
        """Ingress key → the hash its status virtual host answers."""
        self._ready_dirty: set[str] = set()
        self._status_entries: dict[str, bytes] = {}
        self._split_owners: dict[str, tuple[str, ...]] = {}
        """Split host name → the keys of the ingresses whose rules share its virtual host."""
        self._splits_of: dict[str, set[str]] = {}
        self._tls_digests: dict[str, bytes] = {}
        # Scoped view of `http`: which virtual hosts each first label's scope holds.
        self._slot_labels: dict[_SlotId, tuple[bytes, frozenset[str]]] = {}
        self._label_entries: dict[str, dict[_SlotId, bytes]] = {}
        self._label_routes: dict[str, bytes] = {}
        self._label_scopes: dict[str, bytes] = {}
        self._labels_dirty: set[str] = set()
        self._changes_out: dict[str, dict[str, bytes | None]] = {
            resources.LISTENER: dict(self._scoped_listeners)
        }
        self._tls_out: tuple[bytes | None, bytes | None] = (None, None)
        """The TLS listener and route configuration last recorded as changes."""

    # ---- public -------------------------------------------------------------------

    def translate(self, state: RoutingState) -> resources.Resources:
        """Resources for the whole state, as a state-of-the-world gateway gets them.
        Mappings and bytes that did not change are the objects returned before, so
        treat them as read-only."""
        self._sync_ingresses(state.ingresses)
        self._cluster_table.sync(state.backends)
        if self._tls_dirty or state.certificates is not self._last_certificates:
            self._sync_tls(state.certificates)
        return {
            resources.CLUSTER: self._cluster_table.clusters(),
            resources.ENDPOINT: self._cluster_table.endpoints(),
            **self.sotw_resources(),
        }

    def update(
        self,
        *,
        ingresses: Mapping[str, Ingress | None] | None = None,
        backends: Mapping[str, Backend | None] | None = None,
        certificates: Mapping[str, Certificate] | None = None,
    ) -> None:
        """Apply what changed: ingresses and backends by key (None removes one), and the
        whole certificate mapping when it changed."""
        if backends:
            self._cluster_table.update(backends)
        if ingresses:
            self._last_ingresses = None
            self._apply_ingresses(dict(ingresses))
        self._cluster_table.flush()
        if certificates is not None:
            self._tls_dirty = True
            self._certificates = certificates
        if self._tls_dirty:
            self._sync_tls(self._certificates)
        self._sync_routes()

    def take_changes(self) -> dict[str, dict[str, bytes | None]]:
        """What changed in the delta view since the last call (since the start, the first
        time): type URL → name → new body, or None when the resource went away."""
        self._sync_routes()
        out = self._changes_out
        clusters, endpoints = self._cluster_table.take_changes()
        if clusters:
            out.setdefault(resources.CLUSTER, {}).update(clusters)
        if endpoints:
            out.setdefault(resources.ENDPOINT, {}).update(endpoints)
        self._changes_out = {}
        return {t: out[t] for t in _CHANGE_TYPES if out.get(t)}

    def delta_resources(self) -> resources.Resources:
        """Every resource of the delta view: listeners with scoped routes, a scope and a
        route configuration per first label of `http`, and `external-tls`."""
        self._sync_routes()
        listeners = dict(self._scoped_listeners)
        routes: dict[str, bytes] = {
            scoped_name(HTTP_ROUTES, label): body for label, body in self._label_routes.items()
        }
        if self._tls_listener is not None:
            listeners[EXTERNAL_TLS] = self._tls_listener
            routes[EXTERNAL_TLS] = self._rc_bytes[_TLS_RC]
        return {
            resources.CLUSTER: self._cluster_table.clusters(),
            resources.ENDPOINT: self._cluster_table.endpoints(),
            resources.LISTENER: listeners,
            resources.SCOPED_ROUTE: {
                scoped_name(HTTP_ROUTES, label): self._label_scopes[label]
                for label in self._label_routes
            },
            resources.ROUTE: routes,
        }

    def sotw_resources(self) -> dict[str, dict[str, bytes]]:
        """The listeners and routes of the state-of-the-world view: one route
        configuration per listener, `http` whole (assembled here, from encoded parts)."""
        self._sync_routes()
        for rc in self._rc_dirty:
            self._rc_bytes[rc] = route_configuration_bytes(ROUTE_CONFIGS[rc], self._entries(rc))
        self._rc_dirty.clear()
        listeners = dict(self._plain_listeners)
        routes = {HTTP_ROUTES: self._rc_bytes[_HTTP]}
        if self._tls_listener is not None:
            listeners[EXTERNAL_TLS] = self._tls_listener
            routes[EXTERNAL_TLS] = self._rc_bytes[_TLS_RC]
        return {resources.LISTENER: listeners, resources.ROUTE: routes, resources.SCOPED_ROUTE: {}}

    def readiness(self, key: str) -> tuple[Ingress, str] | None:
        """The ingress last translated under `key` and the hash in its status route:
        a gateway answers `/ready/<hash>` on the status host once it serves what was
        built for that ingress. None when probes are off or the key is unknown."""
        built = self._built.get(key)
        digest = self._ready.get(key)
        if built is None or digest is None:
            return None
        return built.ingress, digest

    @property
    def errors(self) -> dict[str, tuple[str, ...]]:
        """Ingress key → one-line problems found by the last translate (host conflicts,
        missing certificates, duplicate ingresses)."""
        found: dict[str, list[str]] = {key: list(self._built[key].notes) for key in self._noted}
        for key in sorted(self._conflicted):
            built = self._built[key]
            for (_, rule), slot in sorted(built.slots.items(), key=lambda item: item[0][::-1]):
                for host, name in zip(slot.hosts, slot.names, strict=True):
                    if host in slot.lost:
                        owner = self._claims[slot.table][name][0]
                        where = (
                            f"spec.rules[{owner[1]}]" if owner[0] == key else f"ingress {owner[0]}"
                        )
                        found.setdefault(key, []).append(
                            f"spec.rules[{rule}].hosts: host {host!r} is already served by {where}"
                        )
        for key, messages in self._tls_errors.items():
            found.setdefault(key, []).extend(messages)
        for key, count in self._duplicates.items():
            found.setdefault(key, []).append(
                f"metadata: ingress {key} is given {count} times, only the first is used"
            )
        return {key: tuple(dict.fromkeys(messages)) for key, messages in sorted(found.items())}

    # ---- ingresses → virtual hosts --------------------------------------------------

    def _sync_ingresses(self, ingresses: Sequence[Ingress]) -> None:
        if ingresses is self._last_ingresses:
            return
        changes = self._changes(ingresses)
        self._last_ingresses = ingresses
        self._apply_ingresses(changes)

    def _apply_ingresses(self, changes: Mapping[str, Ingress | None]) -> None:
        recheck: set[tuple[int, tuple[str, int]]] = set()
        split_names: set[str] = set()
        dirty: set[str] = set()
        gone: dict[str, _Built] = {}
        for key, ingress in changes.items():
            old = self._built.get(key)
            if old is not None and ingress is not None:
                if old.ingress is ingress or old.ingress == ingress:
                    old.ingress = ingress
                    continue
            if old is None and ingress is None:
                continue
            if old is not None:
                gone[key] = old
                self._unclaim(old, recheck, split_names)
                self._tls_dirty |= bool(old.ingress.tls)
                self._tls_keys.discard(key)
                self._conflicted.discard(key)
                self._noted.discard(key)
            if ingress is None:
                if old is not None:
                    self._cluster_table.release(old.clusters)
                    self._remove_key(key)
                continue
            built = self._build(ingress)
            self._cluster_table.acquire(built.clusters)
            if old is None:
                self._insert_key(key)
            else:
                self._cluster_table.release(old.clusters)
            self._built[key] = built
            self._claim(built, recheck, split_names)
            if built.notes:
                self._noted.add(key)
            if ingress.tls:
                self._tls_keys.add(key)
                self._tls_dirty = True
            dirty.add(key)
        dirty |= self._resolve(recheck)
        self._settle_split_hosts(split_names)
        if self._probes:
            self._ready_dirty.update(gone)
            self._ready_dirty.update(dirty)
        for key, old in gone.items():
            built = self._built.get(key)
            for index in old.rules:
                if built is None or index not in built.rules:
                    self._set_slot((0, key, index), b"", ())
        for key in dirty:
            built = self._built.get(key)
            if built is None:
                continue
            for index, rule in built.rules.items():
                self._set_slot((0, key, index), rule.entry.get(_HTTP, b""), rule.served[_HTTP])
            for rc, parts in enumerate(self._parts):
                part = b"".join(rule.entry.get(rc, b"") for rule in built.rules.values())
                if parts.get(key) != part:
                    parts[key] = part
                    self._rc_dirty.add(rc)

    # ---- the scoped view of `http` ------------------------------------------------------

    def _set_slot(self, slot: _SlotId, entry: bytes, hosts: Iterable[str]) -> None:
        """Put one virtual host of `http` (or nothing, for b"") in the scopes of the first
        labels of the hosts it serves, taking it out of the scopes it left."""
        labels = frozenset(host_label(host) for host in hosts) if entry else frozenset()
        old_entry, old_labels = self._slot_labels.get(slot, (b"", frozenset()))
        if old_entry == entry and old_labels == labels:
            return
        for label in old_labels - labels:
            entries = self._label_entries[label]
            del entries[slot]
            if not entries:
                del self._label_entries[label]
            self._labels_dirty.add(label)
        for label in labels:
            entries = self._label_entries.setdefault(label, {})
            if entries.get(slot) != entry:
                entries[slot] = entry
                self._labels_dirty.add(label)
        if labels:
            self._slot_labels[slot] = (entry, labels)
        else:
            self._slot_labels.pop(slot, None)

    def _sync_routes(self) -> None:
        """Bring the delta view up to date and record what changed in it."""
        if self._ready_dirty:
            self._sync_ready()
        out = self._changes_out
        routes = out.setdefault(resources.ROUTE, {})
        scopes = out.setdefault(resources.SCOPED_ROUTE, {})
        for label in self._labels_dirty:
            name = scoped_name(HTTP_ROUTES, label)
            entries = self._label_entries.get(label)
            if not entries:
                if self._label_routes.pop(label, None) is not None:
                    del self._label_scopes[label]
                    routes[name] = None
                    scopes[name] = None
                continue
            body = route_configuration_bytes(name, (entries[slot] for slot in sorted(entries)))
            if label not in self._label_routes:
                scopes[name] = self._label_scopes[label] = scope_bytes(name, label)
            if self._label_routes.get(label) != body:
                self._label_routes[label] = body
                routes[name] = body
        self._labels_dirty.clear()
        if _TLS_RC in self._rc_dirty:
            self._rc_dirty.discard(_TLS_RC)
            self._rc_bytes[_TLS_RC] = route_configuration_bytes(
                EXTERNAL_TLS, self._entries(_TLS_RC)
            )
        tls = (self._tls_listener, self._rc_bytes[_TLS_RC] if self._tls_listener else None)
        if tls != self._tls_out:
            if tls[0] != self._tls_out[0]:
                out.setdefault(resources.LISTENER, {})[EXTERNAL_TLS] = tls[0]
            if tls[1] != self._tls_out[1]:
                routes[EXTERNAL_TLS] = tls[1]
            self._tls_out = tls

    def _entries(self, rc: int) -> list[bytes]:
        """The `virtual_hosts` entries of a whole route configuration, in a fixed order."""
        parts = self._parts[rc]
        entries = [parts[key] for key in self._keys]
        if rc == _HTTP:
            split = self._split_hosts
            entries += (split[name] for name in sorted(split))
            status = self._status_entries
            entries += (status[key] for key in self._keys if key in status)
        return entries

    def _changes(self, ingresses: Sequence[Ingress]) -> dict[str, Ingress | None]:
        """Keys whose ingress may have changed: the new value, or None when removed."""
        old = self._last_ingresses
        if old is None or self._duplicates or len(old) != len(ingresses):
            return self._full_changes(ingresses)
        changed = list(compress(range(len(ingresses)), map(is_not, old, ingresses)))
        removed = {old[i].key for i in changed}
        added: dict[str, Ingress | None] = {}
        for i in changed:
            key = ingresses[i].key
            if key in added or (key in self._built and key not in removed):
                return self._full_changes(ingresses)
            added[key] = ingresses[i]
        changes: dict[str, Ingress | None] = dict.fromkeys(removed - added.keys())
        changes.update(added)
        return changes

    def _full_changes(self, ingresses: Sequence[Ingress]) -> dict[str, Ingress | None]:
        wanted: dict[str, Ingress] = {}
        duplicates: dict[str, int] = {}
        for ingress in ingresses:
            key = ingress.key
            if key in wanted:
                duplicates[key] = duplicates.get(key, 1) + 1
            else:
                wanted[key] = ingress
        self._duplicates = duplicates
        changes: dict[str, Ingress | None] = {key: None for key in self._built if key not in wanted}
        for key, ingress in wanted.items():
            built = self._built.get(key)
            if built is None or built.ingress is not ingress:
                changes[key] = ingress
        return changes

    def _build(self, ingress: Ingress) -> _Built:
        key = ingress.key
        redirected = ingress.http_option is HTTPOption.REDIRECTED
        slots: dict[tuple[int, int], _Slot] = {}
        rules: dict[int, _Rule] = {}
        notes = []
        for index, rule in enumerate(ingress.rules):
            if not rule.hosts:
                notes.append(f"spec.rules[{index}].hosts: no hosts, the rule is not served")
                continue
            hosts, names = _unique_hosts(rule.hosts)
            domains = None if hosts == rule.hosts else hosts
            rank = (key, index)
            external = rule.visibility is Visibility.EXTERNAL_IP
            built_rule = _Rule(index, hosts, names, external, external and redirected, {})
            built_rule.full[_HTTP] = self._encode(ingress, built_rule, _HTTP, domains)
            slots[_INT, index] = _Slot(_INT, rank, hosts, names)
            if external:
                slots[_EXT, index] = _Slot(_EXT, rank, hosts, names)
                if ingress.tls:
                    slots[_TLS, index] = _Slot(_TLS, rank, hosts, names)
                    built_rule.full[_TLS_RC] = (
                        self._encode(ingress, built_rule, _TLS_RC, domains)
                        if built_rule.redirect
                        else built_rule.full[_HTTP]
                    )
            built_rule.entry = dict(built_rule.full)
            built_rule.served = dict.fromkeys(built_rule.full, hosts)
            rules[index] = built_rule
        clusters = frozenset(
            split.backend.key
            for rule in ingress.rules
            for path in rule.paths
            for split in path.splits
            if split.percent > 0
        )
        return _Built(ingress, slots, rules, clusters, tuple(notes))

    def _encode(
        self, ingress: Ingress, rule: _Rule, rc: int, domains: Iterable[str] | None
    ) -> bytes:
        """The `virtual_hosts` entry of one rule in one route configuration."""
        config = self.config
        if rc == _TLS_RC or (rule.external and not rule.redirect):
            vhost = rule_virtual_host(
                ingress, rule.index, default_timeout_s=config.default_timeout_s, domains=domains
            )
        elif rule.external:
            vhost = redirected_virtual_host(
                ingress,
                rule.index,
                default_timeout_s=config.default_timeout_s,
                https_port=config.https_redirect_port,
                domains=domains,
            )
        else:
            vhost = rule_virtual_host(
                ingress,
                rule.index,
                default_timeout_s=config.default_timeout_s,
                domains=domains,
                reach=Reach.INTERNAL,
            )
        return virtual_host_entry(vhost.SerializeToString())

    def _insert_key(self, key: str) -> None:
        bisect.insort(self._keys, key)

    def _remove_key(self, key: str) -> None:
        del self._built[key]
        del self._keys[bisect.bisect_left(self._keys, key)]
        for rc, parts in enumerate(self._parts):
            if parts.pop(key, b""):
                self._rc_dirty.add(rc)

    def _claim(
        self, built: _Built, recheck: set[tuple[int, tuple[str, int]]], split_names: set[str]
    ) -> None:
        for slot in built.slots.values():
            claims = self._claims[slot.table]
            for name in slot.names:
                ranks = claims.get(name)
                if ranks is None:
                    claims[name] = [slot.rank]
                    continue
                bisect.insort(ranks, slot.rank)
                recheck.update((slot.table, rank) for rank in ranks)
                if slot.table == _INT:
                    split_names.add(name)

    def _unclaim(
        self, built: _Built, recheck: set[tuple[int, tuple[str, int]]], split_names: set[str]
    ) -> None:
        for slot in built.slots.values():
            claims = self._claims[slot.table]
            for name in slot.names:
                ranks = claims[name]
                ranks.remove(slot.rank)
                if ranks:
                    recheck.update((slot.table, rank) for rank in ranks)
                    if slot.table == _INT:
                        split_names.add(name)
                else:
                    del claims[name]

    def _resolve(self, recheck: set[tuple[int, tuple[str, int]]]) -> set[str]:
        """Settle which contested hosts each rule keeps; return keys whose bytes changed."""
        refresh: set[tuple[str, int, int]] = set()
        for table, (key, index) in recheck:
            built = self._built.get(key)
            slot = built.slots.get((table, index)) if built is not None else None
            if slot is None:
                continue
            refresh.add((key, index, _RC_OF_TABLE[table]))
            claims = self._claims[table]
            lost = tuple(
                host
                for host, name in zip(slot.hosts, slot.names, strict=True)
                if claims[name][0] != slot.rank
            )
            if lost == slot.lost:
                continue
            slot.lost = lost
            if any(s.lost for s in built.slots.values()):
                self._conflicted.add(key)
            else:
                self._conflicted.discard(key)
        dirty: set[str] = set()
        for key, index, rc in refresh:
            built = self._built[key]
            rule = built.rules[index]
            served = self._served(rule, rc, (key, index))
            if served == rule.served[rc]:
                continue
            rule.served[rc] = served
            if served == rule.hosts:
                rule.entry[rc] = rule.full[rc]
            elif served:
                rule.entry[rc] = self._encode(built.ingress, rule, rc, served)
            else:
                rule.entry[rc] = b""
            dirty.add(key)
        return dirty

    def _served(self, rule: _Rule, rc: int, rank: tuple[str, int]) -> tuple[str, ...]:
        """The hosts a rule keeps in its own virtual host of one route configuration.

        In `http` that is every host the rule wins internally, except that a
        ClusterLocal rule leaves a host some ExternalIP rule also serves to the
        host's own virtual host (see `_settle_split_hosts`).
        """
        pairs = zip(rule.hosts, rule.names, strict=True)
        if rc == _TLS_RC:
            tls = self._claims[_TLS]
            return tuple(host for host, name in pairs if tls[name][0] == rank)
        internal, external = self._claims[_INT], self._claims[_EXT]
        return tuple(
            host
            for host, name in pairs
            if internal[name][0] == rank and (rule.external or name not in external)
        )

    def _settle_split_hosts(self, names: Iterable[str]) -> None:
        """Give each of these hosts its own `http` virtual host if a ClusterLocal rule
        wins it internally and an ExternalIP rule externally, or take that away."""
        for name in names:
            entry = self._split_host_entry(name)
            if entry is None:
                if self._split_hosts.pop(name, None) is not None:
                    self._rc_dirty.add(_HTTP)
                    self._split_host_owners(name, ())
                    self._set_slot((1, name), b"", ())
            elif self._split_hosts.get(name) != entry:
                self._split_hosts[name] = entry
                self._rc_dirty.add(_HTTP)
                self._set_slot((1, name), entry, (name,))
                internal, external = self._claims[_INT][name], self._claims[_EXT][name]
                owners = tuple(dict.fromkeys((internal[0][0], external[0][0])))
                self._split_host_owners(name, owners)

    def _split_host_owners(self, name: str, owners: tuple[str, ...]) -> None:
        """Record whose rules a split host's virtual host holds, for their hashes."""
        if not self._probes:
            return
        old = self._split_owners.pop(name, ())
        for key in old:
            names = self._splits_of[key]
            names.discard(name)
            if not names:
                del self._splits_of[key]
        if owners:
            self._split_owners[name] = owners
            for key in owners:
                self._splits_of.setdefault(key, set()).add(name)
        self._ready_dirty.update(old)
        self._ready_dirty.update(owners)

    def _split_host_entry(self, name: str) -> bytes | None:
        internal = self._claims[_INT].get(name)
        external = self._claims[_EXT].get(name)
        if not internal or not external or internal[0] == external[0]:
            return None
        config = self.config
        (inner_key, inner_index), (outer_key, outer_index) = internal[0], external[0]
        inner, outer = self._built[inner_key], self._built[outer_key]
        inner_rule = inner.rules[inner_index]
        routes = forward_routes(
            inner.ingress,
            inner_index,
            default_timeout_s=config.default_timeout_s,
            reach=Reach.INTERNAL,
        )
        if outer.rules[outer_index].redirect:
            routes += redirect_routes(
                outer.ingress,
                outer_index,
                https_port=config.https_redirect_port,
                reach=Reach.EXTERNAL,
            )
        else:
            routes += forward_routes(
                outer.ingress,
                outer_index,
                default_timeout_s=config.default_timeout_s,
                reach=Reach.EXTERNAL,
            )
        host = inner_rule.hosts[inner_rule.names.index(name)]
        return virtual_host_entry(virtual_host(name, [host], routes).SerializeToString())

    # ---- listeners ----------------------------------------------------------------

    def _build_plain_listeners(self, *, scoped: bool) -> dict[str, bytes]:
        config = self.config
        return {
            name: http_listener(
                name,
                bind_address=config.bind_address,
                port=port,
                route_config_name=HTTP_ROUTES,
                stream_idle_timeout_s=config.stream_idle_timeout_s,
                internal=name == INTERNAL,
                scoped=scoped,
            ).SerializeToString()
            for name, port in ((EXTERNAL, config.external_port), (INTERNAL, config.internal_port))
        }

    def _sync_tls(self, certificates: Mapping[str, Certificate]) -> None:
        self._tls_dirty = False
        self._last_certificates = certificates
        ingresses = [self._built[key].ingress for key in sorted(self._tls_keys)]
        chains, self._tls_errors = sni_chains(ingresses, certificates)
        if self._probes:
            self._sync_tls_digests(chains)
        config = self.config
        self._tls_listener = (
            https_listener(
                EXTERNAL_TLS,
                bind_address=config.bind_address,
                port=config.tls_port,
                route_config_name=EXTERNAL_TLS,
                chains=chains,
                stream_idle_timeout_s=config.stream_idle_timeout_s,
            ).SerializeToString()
            if chains
            else None
        )

    def _sync_tls_digests(self, chains: Iterable[SNIChain]) -> None:
        found: dict[str, list[bytes]] = {}
        for chain in chains:
            key = chain.name.rpartition("/tls[")[0]
            cert = chain.certificate
            found.setdefault(key, []).extend(
                (
                    chain.name.encode(),
                    "\0".join(chain.server_names).encode(),
                    hashlib.sha256(cert.cert_chain_pem.encode()).digest(),
                    hashlib.sha256(cert.private_key_pem.encode()).digest(),
                )
            )
        digests = {key: b"\0".join(parts) for key, parts in found.items()}
        for key in digests.keys() | self._tls_digests.keys():
            if digests.get(key) != self._tls_digests.get(key):
                self._ready_dirty.add(key)
        self._tls_digests = digests

    # ---- status virtual host --------------------------------------------------------

    def _sync_ready(self) -> None:
        for key in self._ready_dirty:
            if key not in self._built:
                if self._ready.pop(key, None) is not None:
                    del self._status_entries[key]
                    self._rc_dirty.add(_HTTP)
                    self._set_slot((2, key), b"", ())
                continue
            digest = ingress_hash(key, self._ready_parts(key))
            if self._ready.get(key) != digest:
                self._ready[key] = digest
                entry = self._status_entries[key] = status_virtual_host_entry(key, digest)
                self._rc_dirty.add(_HTTP)
                self._set_slot((2, key), entry, (ready_host(digest),))
        self._ready_dirty.clear()

    def _ready_parts(self, key: str) -> list[bytes]:
        """Everything built for one ingress, in a fixed order."""
        parts = [self._parts[_HTTP].get(key, b""), self._parts[_TLS_RC].get(key, b"")]
        parts += (self._split_hosts[name] for name in sorted(self._splits_of.get(key, ())))
        parts.append(self._tls_digests.get(key, b""))
        return parts


def translate(state: RoutingState, config: GatewayConfig | None = None) -> resources.Resources:
    """Translate one state from scratch."""
    return Translator(config).translate(state)
