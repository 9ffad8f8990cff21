"""The control plane's side of the activator protocol (`wakegate.proto.v1.Autoscaler`).

Activators stream their per-revision load here (`on_stats`), poke a revision that has
requests waiting and no pod (`on_poke`), and watch the ready pods of every revision,
which the control plane publishes with `set_endpoints` and `delete_revision`.

Every method is meant to be called on the event loop that runs the gRPC server.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import grpc

from wakegate.proto.v1 import autoscaler_pb2 as pb
from wakegate.proto.v1 import autoscaler_pb2_grpc as pb_grpc

log = logging.getLogger("wakegate.autoscaler.service")

RevisionKey = tuple[str, str]
"""(namespace, revision)."""


@dataclass(frozen=True, slots=True)
class ActivatorStat:
    """One revision's load as one activator saw it over one reporting interval."""

    namespace: str
    revision: str
    average_concurrency: float
    """Time-weighted average of the requests inside the activator (held and forwarded)."""
    request_count: int
    """Requests that arrived during the interval."""
    queued: int
    """Requests held when the stat was taken."""
    in_flight: int
    """Requests inside the activator (held and forwarded) when the stat was taken."""
    interval_s: float
    timestamp: float
    """When the activator took the stat, in seconds since the Unix epoch."""


StatsCallback = Callable[[str, ActivatorStat], None]
"""(sender, stat)."""
PokeCallback = Callable[[str, str], None]
"""(namespace, revision)."""


class HasAddress(Protocol):
    """A pod endpoint such as `runtime.pods.PodEndpoint` or `ingress.model.Endpoint`."""

    @property
    def address(self) -> str: ...

    @property
    def port(self) -> int: ...


EndpointLike = tuple[str, int] | HasAddress


def _address(endpoint: EndpointLike) -> pb.Address:
    if isinstance(endpoint, tuple) and len(endpoint) == 2:
        ip, port = endpoint
    else:
        ip, port = endpoint.address, endpoint.port
    return pb.Address(ip=str(ip), port=int(port))


class _Watcher:
    """One WatchEndpoints stream: the revisions changed since its last message.

    Only keys are queued, and the current state is read when the message is built, so a
    slow watcher gets the latest state of each revision rather than every step.
    """

    def __init__(self) -> None:
        self.pending: set[RevisionKey] = set()
        self.wake = asyncio.Event()

    def changed(self, key: RevisionKey) -> None:
        self.pending.add(key)
        self.wake.set()


class AutoscalerService(pb_grpc.AutoscalerServicer):
    """Receives activators' stats and pokes; publishes every revision's ready pods."""

    def __init__(
        self,
        *,
        on_stats: StatsCallback | None = None,
        on_poke: PokeCallback | None = None,
    ) -> None:
        self.on_stats = on_stats
        self.on_poke = on_poke
        self._revisions: dict[RevisionKey, pb.RevisionEndpoints] = {}
        self._watchers: set[_Watcher] = set()
        self._senders: dict[str, int] = {}

    def add_to_server(self, server: grpc.aio.Server) -> None:
        pb_grpc.add_AutoscalerServicer_to_server(self, server)

    # -- the control plane's side -------------------------------------------------------

    def set_endpoints(
        self,
        namespace: str,
        revision: str,
        endpoints: Iterable[EndpointLike],
        container_concurrency: int = 0,
        *,
        hold_timeout_s: float = 0.0,
        gate: EndpointLike | None = None,
    ) -> None:
        """Publish the revision's ready pods (all of them; empty while it has none).

        `hold_timeout_s` bounds how long activators hold a request for this revision;
        0 leaves it to the activator's default. With a `gate`, activators send the
        revision's requests there instead of to a pod.
        """
        key = (namespace, revision)
        state = pb.RevisionEndpoints(
            namespace=namespace,
            revision=revision,
            addresses=[_address(e) for e in endpoints],
            container_concurrency=max(0, int(container_concurrency)),
            hold_timeout_seconds=max(0.0, float(hold_timeout_s)),
            gate=_address(gate) if gate is not None else None,
        )
        if self._revisions.get(key) == state:
            return
        self._revisions[key] = state
        self._changed(key)

    def delete_revision(self, namespace: str, revision: str) -> None:
        key = (namespace, revision)
        if self._revisions.pop(key, None) is not None:
            self._changed(key)

    def endpoints(self, namespace: str, revision: str) -> list[tuple[str, int]] | None:
        """The published pods of a revision; None if it is not published."""
        state = self._revisions.get((namespace, revision))
        if state is None:
            return None
        return [(a.ip, a.port) for a in state.addresses]

    @property
    def watchers(self) -> int:
        """Open WatchEndpoints streams."""
        return len(self._watchers)

    @property
    def senders(self) -> frozenset[str]:
        """Activators with an open ReportStats stream."""
        return frozenset(self._senders)

    def _changed(self, key: RevisionKey) -> None:
        for watcher in self._watchers:
            watcher.changed(key)

    # -- RPCs ----------------------------------------------------------------------------

    async def WatchEndpoints(
        self, request: pb.WatchRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.EndpointsUpdate]:
        watcher = _Watcher()
        self._watchers.add(watcher)
        log.info("activator %s watches endpoints", request.sender or context.peer())
        try:
            yield pb.EndpointsUpdate(full_state=True, revisions=list(self._revisions.values()))
            while True:
                await watcher.wake.wait()
                watcher.wake.clear()
                keys, watcher.pending = watcher.pending, set()
                yield pb.EndpointsUpdate(revisions=[self._current(k) for k in sorted(keys)])
        finally:
            self._watchers.discard(watcher)

    def _current(self, key: RevisionKey) -> pb.RevisionEndpoints:
        state = self._revisions.get(key)
        if state is None:
            return pb.RevisionEndpoints(namespace=key[0], revision=key[1], removed=True)
        return state

    async def ReportStats(
        self, request_iterator: AsyncIterator[pb.StatBatch], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.StatAck]:
        sender = ""
        try:
            async for batch in request_iterator:
                if batch.sender != sender:
                    self._forget_sender(sender)
                    sender = batch.sender
                    self._senders[sender] = self._senders.get(sender, 0) + 1
                self._deliver(batch)
                yield pb.StatAck(sequence=batch.sequence)
        finally:
            self._forget_sender(sender)

    def _forget_sender(self, sender: str) -> None:
        if not sender:
            return
        count = self._senders.get(sender, 0) - 1
        if count > 0:
            self._senders[sender] = count
        else:
            self._senders.pop(sender, None)

    def _deliver(self, batch: pb.StatBatch) -> None:
        if self.on_poke is not None:
            for ref in batch.pokes:
                try:
                    self.on_poke(ref.namespace, ref.revision)
                except Exception:
                    log.exception("on_poke failed for %s/%s", ref.namespace, ref.revision)
        if self.on_stats is not None:
            timestamp = batch.timestamp_unix_ms / 1000
            for s in batch.stats:
                stat = ActivatorStat(
                    namespace=s.namespace,
                    revision=s.revision,
                    average_concurrency=s.average_concurrency,
                    request_count=s.request_count,
                    queued=s.queued,
                    in_flight=s.in_flight,
                    interval_s=batch.interval_seconds,
                    timestamp=timestamp,
                )
                try:
                    self.on_stats(batch.sender, stat)
                except Exception:
                    log.exception("on_stats failed for %s/%s", s.namespace, s.revision)
