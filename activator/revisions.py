"""Every revision the activator knows of or holds requests for."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from wakegate.activator.queue import RevisionQueue
from wakegate.activator.stats import ConcurrencySnapshot
from wakegate.proto.v1 import autoscaler_pb2 as pb

RevisionKey = tuple[str, str]

DEFAULT_MAX_QUEUED = 10_000
DEFAULT_HOLD_TIMEOUT_S = 60.0


class Revisions:
    """`RevisionQueue`s by (namespace, revision), kept in line with the control plane.

    A request may name a revision the control plane has not announced yet; its queue is
    created on demand and holds the request until endpoints arrive or it times out.
    """

    def __init__(
        self,
        *,
        max_queued: int = DEFAULT_MAX_QUEUED,
        hold_timeout_s: float = DEFAULT_HOLD_TIMEOUT_S,
        on_poke: Callable[[RevisionQueue], None] | None = None,
    ) -> None:
        self.max_queued = max_queued
        self.hold_timeout_s = hold_timeout_s
        self.on_poke = on_poke
        self._queues: dict[RevisionKey, RevisionQueue] = {}
        self._interval_start = time.monotonic()

    def __iter__(self) -> Iterator[RevisionQueue]:
        return iter(list(self._queues.values()))

    def __len__(self) -> int:
        return len(self._queues)

    def get(self, namespace: str, revision: str) -> RevisionQueue:
        key = (namespace, revision)
        queue = self._queues.get(key)
        if queue is None:
            queue = RevisionQueue(
                namespace,
                revision,
                max_queued=self.max_queued,
                default_hold_timeout_s=self.hold_timeout_s,
                on_held_without_pods=self._poke,
                interval_start=self._interval_start,
            )
            self._queues[key] = queue
        return queue

    def _poke(self, queue: RevisionQueue) -> None:
        if self.on_poke is not None:
            self.on_poke(queue)

    def apply(self, update: pb.EndpointsUpdate) -> None:
        """Apply one WatchEndpoints message (a full state forgets unlisted revisions)."""
        listed: set[RevisionKey] = set()
        for rev in update.revisions:
            key = (rev.namespace, rev.revision)
            if rev.removed:
                queue = self._queues.get(key)
                if queue is not None:
                    queue.forget()
                continue
            listed.add(key)
            self.get(*key).update(
                [(a.ip, a.port) for a in rev.addresses],
                rev.container_concurrency,
                rev.hold_timeout_seconds,
                (rev.gate.ip, rev.gate.port) if rev.HasField("gate") else None,
            )
        if update.full_state:
            for key, queue in self._queues.items():
                if key not in listed and queue.known:
                    queue.forget()

    def waiting_for_pods(self) -> list[RevisionQueue]:
        """Revisions holding requests with no ready pod (to poke after a reconnect)."""
        return [q for q in self._queues.values() if q.waiting_for_pods]

    def take_stats(self) -> list[tuple[RevisionQueue, ConcurrencySnapshot]]:
        """Close every revision's stats interval and return what each saw, zeros included.

        A revision the control plane does not know (any more) is dropped once it is idle.
        """
        self._interval_start = time.monotonic()
        stats: list[tuple[RevisionQueue, ConcurrencySnapshot]] = []
        for key, queue in list(self._queues.items()):
            load = queue.take_load()
            stats.append((queue, load))
            if not queue.known and not queue.in_flight and not load.requests:
                del self._queues[key]
        return stats
