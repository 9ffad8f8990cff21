"""State-of-the-world ADS: one stream's subscriptions, responses and ACK state.

The stream classes here are plain state machines: requests and snapshot changes
go in, serialised responses come out. The gRPC plumbing lives in `server.py`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from envoy.config.core.v3.base_pb2 import Node
from envoy.service.discovery.v3 import discovery_pb2
from wakegate.xds.cache import Snapshot, SnapshotCache, encode_sotw_response
from wakegate.xds.resources import FULL_STATE_TYPES, SHORT_NAMES, TYPES_IN_ORDER
from wakegate.xds.status import StatusBoard, TypeLedger

log = logging.getLogger("wakegate.xds")

KNOWN_TYPES = frozenset(TYPES_IN_ORDER)


class StreamError(Exception):
    """The client broke the protocol in a way that ends its stream."""


class StreamBase:
    """What SotW and delta streams share: identity, current snapshot, ACK ledgers."""

    mode = ""

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
        self.on_identify: Callable[[StreamBase], None] | None = None
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
            self.seq, self.snapshot = current
        self.board.connected(node.id, group, self.mode)
        if self.on_identify is not None:
            self.on_identify(self)

    def close(self) -> None:
        if self.node_id is not None and self.group is not None and not self._closed:
            self._closed = True
            self.board.disconnected(self.node_id, self.group)

    def known_type(self, type_url: str) -> bool:
        if type_url in KNOWN_TYPES:
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
        self.seq, self.snapshot = current
        return self.snapshot

    def acked_through(self, seq: int, snapshot: Snapshot) -> bool:
        """Whether the gateway accepted, for every type it uses, snapshot `seq` or later."""
        for type_url in TYPES_IN_ORDER:
            ledger = self.ledgers.get(type_url)
            if ledger is None:
                if type_url in FULL_STATE_TYPES and snapshot.resources[type_url]:
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
    sent: dict[str, str] = field(default_factory=dict)
    sent_type_version: str | None = None
    version: str = ""
    nonce: str | None = None
    snapshot_version: str = ""


class SotwStream(StreamBase):
    mode = "sotw"

    def __init__(
        self, cache: SnapshotCache, board: StatusBoard, group_of: Callable[[Node], str]
    ) -> None:
        super().__init__(cache, board, group_of)
        self.types: dict[str, _TypeState] = {}

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
            response = self._respond(type_url, state)
            return [response] if response else []
        if request.response_nonce != state.nonce:
            log.debug("gateway %s: stale nonce %s ignored", self.node_id, request.response_nonce)
            return []
        state.nonce = None
        state.ledger.in_flight = 0
        if request.HasField("error_detail"):
            self.board.nacked(
                self.node_id or "", type_url, state.version, request.error_detail.message
            )
            state.ledger.rejected = True
        else:
            self.board.acked(
                self.node_id or "", type_url, request.version_info, state.snapshot_version
            )
            state.ledger.rejected = False
        state.ledger.settle()
        names = _names(type_url, request, state.names, first=False)
        if names != state.names:
            state.names = names
            response = self._respond(type_url, state)
            return [response] if response else []
        return []

    def refresh(self) -> list[bytes]:
        if self.advance() is None:
            return []
        out = []
        for type_url in TYPES_IN_ORDER:
            state = self.types.get(type_url)
            if state is not None:
                response = self._respond(type_url, state)
                if response:
                    out.append(response)
        return out

    def _respond(self, type_url: str, state: _TypeState) -> bytes | None:
        snapshot = self.snapshot
        if snapshot is None:
            return None
        ledger = state.ledger
        if state.names is None:
            type_version = snapshot.type_versions[type_url]
            if not state.needs_response and type_version == state.sent_type_version:
                ledger.sent_seq = self.seq
                ledger.settle()
                return None
            body = [snapshot.sotw_all(type_url)]
            state.sent_type_version = type_version
            state.sent = {}
        else:
            versions = snapshot.names(type_url)
            desired = {name: versions[name] for name in state.names if name in versions}
            changed = any(state.sent.get(name) != v for name, v in desired.items())
            if not state.needs_response and not changed:
                state.sent = desired
                ledger.sent_seq = self.seq
                ledger.settle()
                return None
            fields = snapshot.sotw_fields(type_url)
            body = [fields[name] for name in sorted(desired)]
            state.sent = desired
            state.sent_type_version = None
        state.needs_response = False
        state.version = snapshot.type_versions[type_url]
        state.nonce = self.next_nonce()
        state.snapshot_version = snapshot.version
        ledger.sent_seq = self.seq
        ledger.in_flight = 1
        self.board.pushed(type_url)
        log.debug(
            "push %s version %s to %s (%d resources)",
            SHORT_NAMES[type_url],
            state.version,
            self.node_id,
            len(snapshot.resources[type_url]) if state.names is None else len(body),
        )
        return encode_sotw_response(
            type_url=type_url, version=state.version, nonce=state.nonce, resources=body
        )


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
