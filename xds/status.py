"""What each gateway has accepted or rejected, for status output and metrics."""

from __future__ import annotations

import logging
import re
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from prometheus_client import Counter, Gauge

from wakegate.xds.resources import SHORT_NAMES

log = logging.getLogger("wakegate.xds")

NACKS = Counter(
    "wakegate_xds_nacks_total",
    "xDS responses rejected by a gateway",
    ["type_url"],
)
PUSHES = Counter(
    "wakegate_xds_pushes_total",
    "xDS responses sent to gateways",
    ["type_url"],
)
PUSHED_BYTES = Counter(
    "wakegate_xds_pushed_bytes_total",
    "Bytes of the xDS responses sent to gateways",
    ["type_url"],
)
CONNECTED = Gauge(
    "wakegate_xds_connected_gateways",
    "Gateways with an open ADS stream",
    ["group"],
)

_FORGET_AFTER = 256
"""How many disconnected nodes keep their status."""


@dataclass(frozen=True)
class Nack:
    type_url: str
    version: str
    """The version of the rejected response."""
    message: str
    """The gateway's error_detail message."""
    time: float
    """Unix time the rejection arrived."""


@dataclass(frozen=True)
class NodeStatus:
    node_id: str
    group: str
    connected: bool
    mode: str
    """"sotw" or "delta"."""
    acked: Mapping[str, str] = field(default_factory=dict)
    """Type URL → the last version the gateway accepted."""
    acked_snapshot: Mapping[str, str] = field(default_factory=dict)
    """Type URL → the snapshot version whose content of that type was last accepted."""
    last_nack: Nack | None = None
    streams: int = 0
    connected_at: float = 0.0
    disconnected_at: float | None = None
    pushed_bytes: int = 0
    """Bytes of every xDS response sent to the gateway so far."""


@dataclass
class _Record:
    node_id: str
    group: str
    mode: str
    streams: int = 0
    acked: dict[str, str] = field(default_factory=dict)
    acked_snapshot: dict[str, str] = field(default_factory=dict)
    last_nack: Nack | None = None
    connected_at: float = 0.0
    disconnected_at: float | None = None
    pushed_bytes: int = 0

    def freeze(self) -> NodeStatus:
        return NodeStatus(
            node_id=self.node_id,
            group=self.group,
            connected=self.streams > 0,
            mode=self.mode,
            acked=MappingProxyType(dict(self.acked)),
            acked_snapshot=MappingProxyType(dict(self.acked_snapshot)),
            last_nack=self.last_nack,
            streams=self.streams,
            connected_at=self.connected_at,
            disconnected_at=self.disconnected_at,
            pushed_bytes=self.pushed_bytes,
        )


class StatusBoard:
    """Per-node status, kept by node id across reconnects."""

    def __init__(self) -> None:
        self._records: OrderedDict[str, _Record] = OrderedDict()

    def connected(self, node_id: str, group: str, mode: str) -> None:
        record = self._records.get(node_id)
        if record is None:
            record = self._records[node_id] = _Record(node_id=node_id, group=group, mode=mode)
        if record.group != group:
            record.acked.clear()
            record.acked_snapshot.clear()
        record.group = group
        record.mode = mode
        record.streams += 1
        record.connected_at = time.time()
        record.disconnected_at = None
        self._records.move_to_end(node_id)
        CONNECTED.labels(group=group).inc()

    def disconnected(self, node_id: str, group: str) -> None:
        CONNECTED.labels(group=group).dec()
        record = self._records.get(node_id)
        if record is None or record.streams == 0:
            return
        record.streams -= 1
        if record.streams == 0:
            record.disconnected_at = time.time()
            self._forget_old()

    def acked(self, node_id: str, type_url: str, version: str, snapshot: str | None) -> None:
        record = self._records.get(node_id)
        if record is None:
            return
        record.acked[type_url] = version
        if snapshot is None:
            record.acked_snapshot.pop(type_url, None)
        else:
            record.acked_snapshot[type_url] = snapshot

    def nacked(self, node_id: str, type_url: str, version: str, message: str) -> Nack:
        nack = Nack(type_url=type_url, version=version, message=message, time=time.time())
        NACKS.labels(type_url=type_url).inc()
        record = self._records.get(node_id)
        group = record.group if record else "?"
        if record is not None:
            record.last_nack = nack
        log.warning(
            "gateway %s (group %s) rejected %s version %s: %s",
            node_id,
            group,
            SHORT_NAMES.get(type_url, type_url),
            version,
            _one_line(message),
        )
        return nack

    def pushed(self, node_id: str, type_url: str, size: int) -> None:
        PUSHES.labels(type_url=type_url).inc()
        PUSHED_BYTES.labels(type_url=type_url).inc(size)
        record = self._records.get(node_id)
        if record is not None:
            record.pushed_bytes += size

    def nodes(self) -> list[NodeStatus]:
        return [record.freeze() for record in self._records.values()]

    def _forget_old(self) -> None:
        gone = [key for key, rec in self._records.items() if rec.streams == 0]
        for key in gone[: max(0, len(gone) - _FORGET_AFTER)]:
            del self._records[key]


def gateway_rows(nodes: list[NodeStatus], current: Mapping[str, bool]) -> list[dict[str, Any]]:
    """Each gateway's xDS state: connected, what it ACKed, whether it accepted the
    current snapshot (`current`, by node id), and its last NACK."""
    rows = []
    for node in nodes:
        nack = node.last_nack
        rows.append(
            {
                "node": node.node_id,
                "group": node.group,
                "connected": node.connected,
                "mode": node.mode,
                "acked": {SHORT_NAMES.get(t, t): v for t, v in sorted(node.acked.items())},
                "inSync": node.connected and current.get(node.node_id, False),
                "lastNack": None
                if nack is None
                else {
                    "type": SHORT_NAMES.get(nack.type_url, nack.type_url),
                    "version": nack.version,
                    "message": nack.message,
                    "time": nack.time,
                },
                "connectedAt": node.connected_at,
            }
        )
    return rows


def _one_line(message: str) -> str:
    return re.sub(r"\s*\n\s*", " | ", message.strip()) or "(no message)"


class TypeLedger:
    """Acknowledgement bookkeeping for one resource type on one stream.

    `sent_seq` is the snapshot sequence number the gateway's state of this type
    corresponds to once everything sent has been accepted; `acked_seq` is the
    latest such number the gateway has actually accepted.
    """

    __slots__ = ("acked_seq", "in_flight", "rejected", "sent_seq")

    def __init__(self) -> None:
        self.sent_seq = 0
        self.acked_seq = 0
        self.in_flight = 0
        self.rejected = False

    def settle(self) -> None:
        if not self.in_flight and not self.rejected and self.sent_seq > self.acked_seq:
            self.acked_seq = self.sent_seq
