"""Incremental (delta) ADS: one stream's subscriptions, responses and ACK state.

The server tracks, per type, which version of each resource the gateway holds
(seeded from `initial_resource_versions` on reconnect) and sends only what
differs, plus `removed_resources` for what went away or does not exist. Once a type
has been answered, the next answer looks only at the names that changed between the
snapshot answered then and the current one, so a change costs what it touches,
however many resources the gateway holds.

Scoped routes name the route configurations Envoy then subscribes to. A response
with routes waits until the gateway has subscribed to every route configuration the
scopes it was sent name: routes of one update go out together, so a readiness route
is never served before a route configuration of the same update.
"""

from __future__ import annotations

import collections
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from envoy.config.core.v3.base_pb2 import Node
from envoy.config.route.v3 import scoped_route_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf.message import DecodeError

from wakegate.xds.cache import Snapshot, SnapshotCache, encode_delta_response
from wakegate.xds.resources import (
    CLUSTER,
    ENDPOINT,
    FULL_STATE_TYPES,
    ROUTE,
    SCOPED_ROUTE,
    SHORT_NAMES,
)
from wakegate.xds.sotw import StreamBase
from wakegate.xds.status import StatusBoard, TypeLedger

log = logging.getLogger("wakegate.xds")

_MAX_IN_FLIGHT = 1024
"""Unanswered responses remembered per type; older ones can no longer be ACKed."""

CHUNK = 2000
"""Resources per response: a gateway's first answer for 100,000 Services would otherwise
be one message of tens of megabytes, which Envoy decodes whole (its memory keeps the
peak's fragmentation); in parts it takes them one after the other, all the same."""


@dataclass(frozen=True)
class _Sent:
    names: tuple[str, ...]
    removed: tuple[str, ...]
    system_version: str


@dataclass
class _TypeState:
    wildcard: bool
    names: set[str] = field(default_factory=set)
    client: dict[str, str] = field(default_factory=dict)
    """Name → version the gateway holds, as far as the server knows."""
    synced: Snapshot | None = None
    """The snapshot `client` matches for every subscribed name, when known."""
    fresh: set[str] = field(default_factory=set)
    """Names subscribed since the last response: tell the gateway if they do not exist."""
    in_sync_with: str | None = None
    """Type version the gateway's whole wildcard state equals, when known."""
    pending: OrderedDict[str, _Sent] = field(default_factory=OrderedDict)
    rejected: set[str] = field(default_factory=set)
    ledger: TypeLedger = field(default_factory=TypeLedger)
    needs_response: bool = True


class _ScopedRoutes:
    """Route configurations named by the scopes a gateway was sent, and which of them it
    has not subscribed to yet."""

    def __init__(self) -> None:
        self.route_of: dict[str, str] = {}
        self.users: collections.Counter[str] = collections.Counter()
        self.missing: set[str] = set()

    def sent(self, scopes: Iterable[tuple[str, bytes]], subscribed: set[str]) -> None:
        for name, body in scopes:
            route = ""
            with contextlib.suppress(DecodeError):
                route = scoped_route_pb2.ScopedRouteConfiguration.FromString(
                    body
                ).route_configuration_name
            self.removed((name,))
            if route:
                self.route_of[name] = route
                self.users[route] += 1
                if route not in subscribed:
                    self.missing.add(route)

    def removed(self, scopes: Iterable[str]) -> None:
        for name in scopes:
            route = self.route_of.pop(name, None)
            if route is not None:
                self.users[route] -= 1
                if self.users[route] <= 0:
                    del self.users[route]
                    self.missing.discard(route)

    def subscribed(self, names: Iterable[str]) -> None:
        self.missing.difference_update(names)

    def unsubscribed(self, names: Iterable[str]) -> None:
        self.missing.update(name for name in names if name in self.users)


class DeltaStream(StreamBase):
    mode = "delta"

    def __init__(
        self, cache: SnapshotCache, board: StatusBoard, group_of: Callable[[Node], str]
    ) -> None:
        super().__init__(cache, board, group_of)
        self.types: dict[str, _TypeState] = {}
        self.scoped = _ScopedRoutes()

    def held(self, type_url: str) -> bool:
        return super().held(type_url) or (type_url == ROUTE and bool(self.scoped.missing))

    def acked_through(self, seq: int, snapshot: Snapshot) -> bool:
        return not self.scoped.missing and super().acked_through(seq, snapshot)

    def handle(self, request: discovery_pb2.DeltaDiscoveryRequest) -> list[bytes]:
        self.identify(request.node, request.HasField("node"))
        type_url = request.type_url
        if not self.known_type(type_url):
            return []
        state = self.types.get(type_url)
        subscribe = list(request.resource_names_subscribe)
        first = state is None
        if state is None:
            wildcard = "*" in subscribe or (not subscribe and type_url in FULL_STATE_TYPES)
            state = _TypeState(wildcard=wildcard)
            self.types[type_url] = state
            self.ledgers[type_url] = state.ledger
            state.client.update(request.initial_resource_versions)
        out = []
        if request.response_nonce:
            self._answer(type_url, state, request)
            if type_url == CLUSTER and not state.pending:
                out = self.release_held()
            elif type_url == SCOPED_ROUTE and not state.pending and self.scoped.missing:
                # Envoy subscribes to the route configurations of new scopes before it
                # answers them; one it did not subscribe to is not waited for.
                log.debug("gateway %s did not subscribe to %s", self.node_id, self.scoped.missing)
                self.scoped.missing.clear()
                out = self.respond_all((ROUTE,))
        unsubscribe = list(request.resource_names_unsubscribe)
        changed = self._subscribe(state, subscribe, unsubscribe)
        if type_url == ROUTE:
            self.scoped.subscribed(subscribe)
            self.scoped.unsubscribed(unsubscribe)
        if first:
            if not state.wildcard:
                for name in list(state.client):
                    if name not in state.names:
                        del state.client[name]
            state.fresh = set(state.names)
        if first or changed:
            return out + self.respond_with_endpoints(type_url, state)
        return out

    def _answer(
        self, type_url: str, state: _TypeState, request: discovery_pb2.DeltaDiscoveryRequest
    ) -> None:
        sent = state.pending.pop(request.response_nonce, None)
        if sent is None:
            log.debug("gateway %s: stale nonce %s ignored", self.node_id, request.response_nonce)
            return
        if request.HasField("error_detail"):
            self.board.nacked(
                self.node_id or "", type_url, sent.system_version, request.error_detail.message
            )
            state.rejected.update(sent.names)
            state.rejected.update(sent.removed)
            state.in_sync_with = None
        else:
            state.rejected.difference_update(sent.names)
            state.rejected.difference_update(sent.removed)
            self.board.acked(self.node_id or "", type_url, sent.system_version, sent.system_version)
        ledger = state.ledger
        ledger.in_flight = len(state.pending)
        ledger.rejected = bool(state.rejected)
        ledger.settle()

    @staticmethod
    def _subscribe(state: _TypeState, subscribe: list[str], unsubscribe: list[str]) -> bool:
        changed = False
        for name in subscribe:
            if name == "*":
                changed |= not state.wildcard
                if not state.wildcard:
                    state.synced = None
                state.wildcard = True
            elif name not in state.names:
                state.names.add(name)
                state.fresh.add(name)
                changed = True
        for name in unsubscribe:
            if name == "*":
                changed |= state.wildcard
                state.wildcard = False
                state.in_sync_with = None
                for held in list(state.client):
                    if held not in state.names:
                        del state.client[held]
                        state.rejected.discard(held)
            elif name in state.names:
                state.names.discard(name)
                state.fresh.discard(name)
                if not state.wildcard:
                    state.client.pop(name, None)
                    state.rejected.discard(name)
                changed = True
        if changed:
            state.ledger.rejected = bool(state.rejected)
        return changed

    def _candidates(self, type_url: str, state: _TypeState, snapshot: Snapshot) -> Iterable[str]:
        """The names whose state may differ between the gateway and `snapshot`."""
        changed = snapshot.changed_since(state.synced, type_url)
        if changed is None:
            if state.wildcard:
                return (*snapshot.names(type_url), *state.client, *state.fresh)
            return state.names
        changed |= state.fresh
        return changed if state.wildcard else changed.intersection(state.names)

    def _respond(self, type_url: str, state: _TypeState) -> list[bytes]:
        snapshot = self.snapshot
        if snapshot is None:
            return []
        versions = snapshot.names(type_url)
        client = state.client
        ledger = state.ledger
        resend: set[str] = set()
        if type_url == ENDPOINT and self.resend_endpoints:
            resend, self.resend_endpoints = self.resend_endpoints, set()
        if state.wildcard:
            type_version = snapshot.type_versions[type_url]
            if (
                not state.needs_response
                and not state.fresh
                and not resend
                and state.in_sync_with == type_version
            ):
                state.synced = snapshot
                ledger.sent_seq = self.seq
                ledger.settle()
                return []
        else:
            resend.intersection_update(state.names)
        updated: list[str] = []
        removed: list[str] = []
        for name in dict.fromkeys((*self._candidates(type_url, state, snapshot), *resend)):
            version = versions.get(name)
            if version is not None:
                if client.get(name) != version or name in resend:
                    updated.append(name)
            elif name in client or name in state.fresh:
                removed.append(name)
        state.fresh.clear()
        state.synced = snapshot
        if state.wildcard:
            state.in_sync_with = snapshot.type_versions[type_url]
        if not updated and not removed and not state.needs_response:
            ledger.sent_seq = self.seq
            ledger.settle()
            return []
        if type_url == CLUSTER:
            held = {name: client[name] for name in updated if name in client}
            self.note_modified_clusters(held, versions)
            self.note_new_clusters(len(held) < len(updated))
        for name in updated:
            client[name] = versions[name]
        for name in removed:
            client.pop(name, None)
        if type_url == SCOPED_ROUTE:
            bodies = snapshot.resources[SCOPED_ROUTE]
            self.scoped.removed(removed)
            routes = self.types.get(ROUTE)
            self.scoped.sent(
                ((name, bodies[name]) for name in updated), routes.names if routes else set()
            )
        state.needs_response = False
        log.debug(
            "push %s %s to %s (%d updated, %d removed)",
            SHORT_NAMES[type_url],
            snapshot.version,
            self.node_id,
            len(updated),
            len(removed),
        )
        fields = snapshot.delta_fields(type_url)
        out = []
        for start in range(0, max(len(updated), 1), CHUNK):
            names = updated[start : start + CHUNK]
            gone = removed if start == 0 else []
            nonce = self.next_nonce()
            state.pending[nonce] = _Sent(tuple(names), tuple(gone), snapshot.version)
            body = encode_delta_response(
                type_url=type_url,
                system_version=snapshot.version,
                nonce=nonce,
                resources=[fields[name] for name in names],
                removed=gone,
            )
            self.board.pushed(self.node_id or "", type_url, len(body))
            out.append(body)
        while len(state.pending) > _MAX_IN_FLIGHT:
            state.pending.popitem(last=False)
        ledger.sent_seq = self.seq
        ledger.in_flight = len(state.pending)
        return out
