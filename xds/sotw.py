"""State-of-the-world ADS: one stream's subscriptions, responses and ACK state.

The stream classes here are plain state machines: requests and snapshot changes
go in, serialised responses come out. The gRPC plumbing lives in `server.py`.

Listeners and clusters go out whole in every response, as the protocol requires;
routes and endpoints, which are subscribed by name, only as far as the gateway lacks
them, so one changed endpoint set does not resend every other one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from envoy.config.core.v3.base_pb2 import Node
from envoy.service.discovery.v3 import discovery_pb2

from wakegate.xds.cache import Snapshot, SnapshotCache, encode_sotw_response
from wakegate.xds.resources import (
    CLUSTER,
    DELTA_ONLY_TYPES,
    ENDPOINT,
    FULL_STATE_TYPES,
    HELD_FOR_NEW_CLUSTERS,
    SHORT_NAMES,
    TYPES_IN_ORDER,
)
from wakegate.xds.status import StatusBoard, TypeLedger

log = logging.getLogger("wakegate.xds")


class StreamError(Exception):
    """The client broke the protocol in a way that ends its stream."""


class StreamBase:
    """What SotW and delta streams share: identity, current snapshot, ACK ledgers."""

    mode = ""
    served_types: tuple[str, ...] = TYPES_IN_ORDER
    """The types this kind of stream serves, in the order a consistent update needs."""

    def __init__(
        self, cache: SnapshotCache, board: StatusBoard, group_of: Callable[[Node], str]
    ) -> None:
        self.cache = cache
        self.board = board
        self.group_of = group_of
        self.node_id: str | None = None
        self.group: str | None = None
        self.seq = 0
        self.snapshot: Snapshot | None = None
        self.ledgers: dict[str, TypeLedger] = {}
        self.types: dict[str, Any] = {}
        self.on_identify: Callable[[StreamBase], None] | None = None
        self.resend_endpoints: set[str] = set()
        """Endpoint names to send again: their clusters changed and are warming."""
        self.clusters_warming = False
        """New clusters went out unanswered: listeners and routes wait for the answer.

        A route naming a cluster the gateway is still warming fails with 503, so a
        snapshot's listeners and routes only follow once the gateway has answered
        the clusters they may name. Envoy asks for the new clusters' endpoints
        before it answers, so those are on the stream ahead of the routes.
        """
        self._nonce = 0
        self._closed = False
        self._ignored_types: set[str] = set()

    def identify(self, node: Node, has_node: bool) -> None:
        if self.node_id is not None:
            return
        if not has_node:
            raise StreamError("the first request of a stream must carry the node")
        try:
            group = self.group_of(node)
        except Exception as exc:
            raise StreamError(f"cannot place node {node.id!r} in a group: {exc}") from exc
        self.node_id = node.id
        self.group = group
        current = self.cache.current(group)
        if current is not None:
            self.seq, self.snapshot = current[0], self.view(current[1])
        self.board.connected(node.id, group, self.mode)
        if self.on_identify is not None:
            self.on_identify(self)

    def close(self) -> None:
        if self.node_id is not None and self.group is not None and not self._closed:
            self._closed = True
            self.board.disconnected(self.node_id, self.group)

    def view(self, snapshot: Snapshot) -> Snapshot:
        """The snapshot as this kind of stream serves it."""
        return snapshot

    def known_type(self, type_url: str) -> bool:
        if type_url in self.served_types:
            return True
        if type_url not in self._ignored_types:
            self._ignored_types.add(type_url)
            log.warning(
                "gateway %s requested unsupported type %r; ignoring it",
                self.node_id,
                type_url or "(empty)",
            )
        return False

    def next_nonce(self) -> str:
        self._nonce += 1
        return str(self._nonce)

    def advance(self) -> Snapshot | None:
        """Adopt the group's newest snapshot; None when there is nothing newer."""
        if self.group is None:
            return None
        current = self.cache.current(self.group)
        if current is None or current[0] == self.seq:
            return None
        self.seq, self.snapshot = current[0], self.view(current[1])
        return self.snapshot

    def note_modified_clusters(self, before: Mapping[str, str], after: Mapping[str, str]) -> None:
        """Remember the endpoint names of clusters that changed between two pushes.

        Envoy warms a modified EDS cluster until it receives its endpoints, and
        does not always ask for them again (delta never does), so they are sent
        after the clusters even when they did not change.
        """
        if not before or self.snapshot is None:
            return
        modified = [name for name, v in before.items() if name in after and after[name] != v]
        if modified:
            self.resend_endpoints.update(self.snapshot.eds_names(modified))

    def refresh(self) -> list[bytes]:
        """Responses for every subscribed type that the newest snapshot changed."""
        if self.advance() is None:
            return []
        return self.respond_all(self.served_types)

    def respond_all(self, types: Iterable[str]) -> list[bytes]:
        """Responses for each of `types` (in order) that has something to send and is not
        held back."""
        out = []
        for type_url in types:
            state = self.types.get(type_url)
            if state is not None and not self.held(type_url):
                out += self._respond(type_url, state)
        return out

    def held(self, type_url: str) -> bool:
        return self.clusters_warming and type_url in HELD_FOR_NEW_CLUSTERS

    def note_new_clusters(self, added: bool) -> None:
        if added:
            self.clusters_warming = True

    def release_held(self) -> list[bytes]:
        """The gateway answered the newest clusters: send what waited for them."""
        if not self.clusters_warming:
            return []
        self.clusters_warming = False
        return self.respond_all(HELD_FOR_NEW_CLUSTERS)

    def respond_with_endpoints(self, type_url: str, state: Any) -> list[bytes]:
        """Answer a (changed) subscription: a response for `type_url`, then the
        endpoints that changed clusters need.

        What the gateway ACKed before covered its old subscription only, so a
        type answered here counts as ACKed for the current snapshot only once
        this answer is.
        """
        if self.held(type_url):
            state.needs_response = True
            return []
        out = []
        answered = [(type_url, self._respond(type_url, state))]
        endpoints = self.types.get(ENDPOINT)
        if type_url == CLUSTER and endpoints is not None and self.resend_endpoints:
            answered.append((ENDPOINT, self._respond(ENDPOINT, endpoints)))
        for answered_type, responses in answered:
            if responses:
                out += responses
                ledger = self.ledgers[answered_type]
                ledger.acked_seq = min(ledger.acked_seq, self.seq - 1)
        return out

    def _respond(self, type_url: str, state: Any) -> list[bytes]:
        """The responses bringing the gateway's `type_url` up to the current snapshot."""
        raise NotImplementedError

    def acked_through(self, seq: int, snapshot: Snapshot) -> bool:
        """Whether the gateway accepted, for every type it uses, snapshot `seq` or later."""
        snapshot = self.view(snapshot)
        for type_url in self.served_types:
            ledger = self.ledgers.get(type_url)
            if ledger is None:
                if type_url in FULL_STATE_TYPES and snapshot.count(type_url):
                    return False
            elif ledger.acked_seq < seq:
                return False
        return True


@dataclass
class _TypeState:
    names: frozenset[str] | None
    """Subscribed names; None means every resource of the type."""
    ledger: TypeLedger = field(default_factory=TypeLedger)
    needs_response: bool = True
    sent: Mapping[str, str] = field(default_factory=dict)
    """Name → version of every subscribed resource the gateway has been sent."""
    sent_type_version: str | None = None
    version: str = ""
    nonce: str | None = None
    answered: bool = True
    snapshot_version: str = ""


class SotwStream(StreamBase):
    mode = "sotw"
    served_types = tuple(t for t in TYPES_IN_ORDER if t not in DELTA_ONLY_TYPES)

    def __init__(
        self, cache: SnapshotCache, board: StatusBoard, group_of: Callable[[Node], str]
    ) -> None:
        super().__init__(cache, board, group_of)
        self.types: dict[str, _TypeState] = {}

    def view(self, snapshot: Snapshot) -> Snapshot:
        return snapshot.for_sotw()

    def handle(self, request: discovery_pb2.DiscoveryRequest) -> list[bytes]:
        self.identify(request.node, request.HasField("node"))
        type_url = request.type_url
        if not self.known_type(type_url):
            return []
        state = self.types.get(type_url)
        if state is None or not request.response_nonce:
            state = _TypeState(names=_names(type_url, request, None, first=True))
            self.types[type_url] = state
            self.ledgers[type_url] = state.ledger
            if request.version_info:
                self.board.acked(self.node_id or "", type_url, request.version_info, None)
            return self.respond_with_endpoints(type_url, state)
        if request.response_nonce != state.nonce:
            log.debug("gateway %s: stale nonce %s ignored", self.node_id, request.response_nonce)
            return []
        out = []
        if not state.answered:
            state.answered = True
            self._answer(type_url, state, request)
            if type_url == CLUSTER:
                out = self.release_held()
        names = _names(type_url, request, state.names, first=False)
        if names != state.names:
            state.names = names
            return out + self.respond_with_endpoints(type_url, state)
        return out

    def _answer(
        self, type_url: str, state: _TypeState, request: discovery_pb2.DiscoveryRequest
    ) -> None:
        ledger = state.ledger
        ledger.in_flight = 0
        if request.HasField("error_detail"):
            self.board.nacked(
                self.node_id or "", type_url, state.version, request.error_detail.message
            )
            ledger.rejected = True
        else:
            self.board.acked(
                self.node_id or "", type_url, request.version_info, state.snapshot_version
            )
            ledger.rejected = False
        ledger.settle()

    def _respond(self, type_url: str, state: _TypeState) -> list[bytes]:
        snapshot = self.snapshot
        if snapshot is None:
            return []
        ledger = state.ledger
        versions = snapshot.names(type_url)
        resend: set[str] = set()
        if type_url == ENDPOINT and self.resend_endpoints:
            wanted = versions if state.names is None else state.names
            resend = self.resend_endpoints.intersection(wanted)
            self.resend_endpoints.clear()
        if state.names is None:
            type_version = snapshot.type_versions[type_url]
            if not state.needs_response and not resend and type_version == state.sent_type_version:
                ledger.sent_seq = self.seq
                ledger.settle()
                return []
            if type_url == CLUSTER:
                self.note_modified_clusters(state.sent, versions)
                self.note_new_clusters(not versions.keys() <= state.sent.keys())
            body = [snapshot.sotw_all(type_url)]
            state.sent_type_version = type_version
            state.sent = versions
            count = len(versions)
        else:
            # Per-name types (routes, endpoints) need not repeat what the gateway
            # already holds: a response carries the subscribed resources it lacks or
            # holds in another version, all of them only when a response is owed.
            desired = {name: versions[name] for name in state.names if name in versions}
            if state.needs_response:
                send = sorted(desired)
            else:
                sent = state.sent
                send = sorted(
                    name for name, v in desired.items() if name in resend or sent.get(name) != v
                )
            if not send and not state.needs_response:
                state.sent = desired
                ledger.sent_seq = self.seq
                ledger.settle()
                return []
            fields = snapshot.sotw_fields(type_url)
            body = [fields[name] for name in send]
            state.sent = desired
            state.sent_type_version = None
            count = len(send)
        state.needs_response = False
        state.version = snapshot.type_versions[type_url]
        state.nonce = self.next_nonce()
        state.answered = False
        state.snapshot_version = snapshot.version
        ledger.sent_seq = self.seq
        ledger.in_flight = 1
        log.debug(
            "push %s version %s to %s (%d resources)",
            SHORT_NAMES[type_url],
            state.version,
            self.node_id,
            count,
        )
        response = encode_sotw_response(
            type_url=type_url, version=state.version, nonce=state.nonce, resources=body
        )
        self.board.pushed(self.node_id or "", type_url, len(response))
        return [response]


def _names(
    type_url: str,
    request: discovery_pb2.DiscoveryRequest,
    previous: frozenset[str] | None,
    *,
    first: bool,
) -> frozenset[str] | None:
    names = frozenset(request.resource_names)
    if "*" in names:
        return None
    if not names and type_url in FULL_STATE_TYPES and (first or previous is None):
        return None
    return names
