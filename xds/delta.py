"""Incremental (delta) ADS: one stream's subscriptions, responses and ACK state.

The server tracks, per type, which version of each resource the gateway holds
(seeded from `initial_resource_versions` on reconnect) and sends only what
differs, plus `removed_resources` for what went away or does not exist.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from envoy.config.core.v3.base_pb2 import Node
from envoy.service.discovery.v3 import discovery_pb2

from wakegate.xds.cache import SnapshotCache, encode_delta_response
from wakegate.xds.resources import CLUSTER, ENDPOINT, FULL_STATE_TYPES, SHORT_NAMES
from wakegate.xds.sotw import StreamBase
from wakegate.xds.status import StatusBoard, TypeLedger

log = logging.getLogger("wakegate.xds")

_MAX_IN_FLIGHT = 64
"""Unanswered responses remembered per type; older ones can no longer be ACKed."""


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
    fresh: set[str] = field(default_factory=set)
    """Names subscribed since the last response: tell the gateway if they do not exist."""
    in_sync_with: str | None = None
    """Type version the gateway's whole wildcard state equals, when known."""
    pending: OrderedDict[str, _Sent] = field(default_factory=OrderedDict)
    rejected: set[str] = field(default_factory=set)
    ledger: TypeLedger = field(default_factory=TypeLedger)
    needs_response: bool = True


class DeltaStream(StreamBase):
    mode = "delta"

    def __init__(
        self, cache: SnapshotCache, board: StatusBoard, group_of: Callable[[Node], str]
    ) -> None:
        super().__init__(cache, board, group_of)
        self.types: dict[str, _TypeState] = {}

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
        changed = self._subscribe(state, subscribe, list(request.resource_names_unsubscribe))
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

    def _respond(self, type_url: str, state: _TypeState) -> bytes | None:
        snapshot = self.snapshot
        if snapshot is None:
            return None
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
                ledger.sent_seq = self.seq
                ledger.settle()
                return None
            updated = [name for name, v in versions.items() if client.get(name) != v]
            removed = [name for name in client if name not in versions]
            removed += [n for n in state.fresh if n not in versions and n not in client]
        else:
            updated = [n for n in state.names if n in versions and client.get(n) != versions[n]]
            removed = [
                n for n in state.names if n not in versions and (n in client or n in state.fresh)
            ]
        if resend:
            already = set(updated)
            updated += [
                name
                for name in resend
                if name in versions
                and name not in already
                and (state.wildcard or name in state.names)
            ]
        state.fresh.clear()
        if state.wildcard:
            state.in_sync_with = snapshot.type_versions[type_url]
        if not updated and not removed and not state.needs_response:
            ledger.sent_seq = self.seq
            ledger.settle()
            return None
        if type_url == CLUSTER:
            held = {name: client[name] for name in updated if name in client}
            self.note_modified_clusters(held, versions)
            self.note_new_clusters(len(held) < len(updated))
        for name in updated:
            client[name] = versions[name]
        for name in removed:
            client.pop(name, None)
        state.needs_response = False
        nonce = self.next_nonce()
        state.pending[nonce] = _Sent(tuple(updated), tuple(removed), snapshot.version)
        while len(state.pending) > _MAX_IN_FLIGHT:
            state.pending.popitem(last=False)
        ledger.sent_seq = self.seq
        ledger.in_flight = len(state.pending)
        self.board.pushed(type_url)
        log.debug(
            "push %s %s to %s (%d updated, %d removed)",
            SHORT_NAMES[type_url],
            snapshot.version,
            self.node_id,
            len(updated),
            len(removed),
        )
        fields = snapshot.delta_fields(type_url)
        return encode_delta_response(
            type_url=type_url,
            system_version=snapshot.version,
            nonce=nonce,
            resources=[fields[name] for name in updated],
            removed=removed,
        )
