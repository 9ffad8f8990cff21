"""Holding a revision's requests until one of its pods can take them.

A request takes a pod slot at once when a ready pod has room (fewer requests in flight
than `containerConcurrency`, or any pod when that is 0), and otherwise waits in the
revision's FIFO queue: while the revision has no ready pod (scale from zero), while
every pod is full, or while the only pods just refused connections. The queue is bounded
and every wait ends at the request's deadline.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterable

from wakegate.activator.pods import PodSet, PodSlot
from wakegate.activator.stats import ConcurrencySnapshot, ConcurrencyTracker


class QueueFull(Exception):
    """The revision already holds as many requests as the activator allows."""


class HoldTimeout(Exception):
    """No pod could take the request before its deadline."""


class RevisionQueue:
    """One revision: its ready pods, its held requests and its load."""

    def __init__(
        self,
        namespace: str,
        revision: str,
        *,
        max_queued: int,
        default_hold_timeout_s: float,
        on_held_without_pods: Callable[[RevisionQueue], None] | None = None,
        interval_start: float | None = None,
    ) -> None:
        """`interval_start` (a `time.monotonic()` time) begins the first stats interval,
        so revisions created at different times share interval boundaries."""
        self.namespace = namespace
        self.revision = revision
        self.max_queued = max_queued
        self.default_hold_timeout_s = default_hold_timeout_s
        self.on_held_without_pods = on_held_without_pods
        self.pods = PodSet()
        self._load = ConcurrencyTracker(
            time.monotonic() if interval_start is None else interval_start
        )
        self.known = False
        """Whether the control plane has told us about this revision."""
        self.hold_timeout_s_from_control_plane = 0.0
        self.gate: str | None = None
        """host:port of the gateway's gate for this revision, where requests go instead of
        straight to a pod: the gate holds each pod to `containerConcurrency` whoever
        sends the request (see `wakegate.xds.gate`). None: straight to the pods."""
        self.gate_address: tuple[str, int] | None = None
        """The gate's (host, port)."""
        self._waiters: deque[asyncio.Future[PodSlot]] = deque()
        self._queued = 0
        self._poked = False
        self._retry: asyncio.TimerHandle | None = None

    @property
    def name(self) -> str:
        return f"{self.namespace}/{self.revision}"

    @property
    def hold_timeout_s(self) -> float:
        return self.hold_timeout_s_from_control_plane or self.default_hold_timeout_s

    @property
    def queued(self) -> int:
        """Requests waiting for a pod."""
        return self._queued

    @property
    def in_flight(self) -> int:
        """Requests inside the activator for this revision, held or forwarded."""
        return self._load.in_flight

    def request_started(self) -> None:
        self._load.start(time.monotonic())

    def request_finished(self) -> None:
        self._load.finish(time.monotonic())

    def take_load(self) -> ConcurrencySnapshot:
        """Exact average concurrency and arrivals since the previous call."""
        return self._load.snapshot(time.monotonic())

    @property
    def waiting_for_pods(self) -> bool:
        """Requests are held and the revision has no ready pod: it must scale from zero."""
        return self._queued > 0 and not self.pods

    def update(
        self,
        addresses: Iterable[tuple[str, int]],
        container_concurrency: int,
        hold_timeout_s: float,
        gate: tuple[str, int] | None = None,
    ) -> None:
        """Apply the control plane's view of the revision (its whole pod set)."""
        self.known = True
        self.pods.replace(addresses)
        self.pods.container_concurrency = container_concurrency
        self.hold_timeout_s_from_control_plane = hold_timeout_s
        self.gate = None if gate is None else PodSlot(*gate).authority
        self.gate_address = gate
        if self.pods:
            self._poked = False
            self._dispatch()
        else:
            self._poke_if_waiting()

    def forget(self) -> None:
        """The revision was removed: no pod is picked any more; held requests time out."""
        self.known = False
        self.pods.replace(())
        self.hold_timeout_s_from_control_plane = 0.0
        self.gate = None
        self.gate_address = None

    def _poke_if_waiting(self) -> None:
        """Ask once per wait for a pod when requests are held and no pod is ready."""
        if self.waiting_for_pods and not self._poked:
            self._poked = True
            if self.on_held_without_pods is not None:
                self.on_held_without_pods(self)

    def try_acquire(self) -> PodSlot | None:
        """A pod slot for one request if one is free now and nobody waits; the caller
        must `release` it. None: `acquire` (and wait)."""
        if self._queued:
            return None
        return self.pods.pick(asyncio.get_running_loop().time())

    async def acquire(self, deadline: float) -> PodSlot:
        """A pod slot for one request, waiting until `deadline` (event-loop time) if needed.

        Raises QueueFull or HoldTimeout. The caller must `release` the slot.
        """
        loop = asyncio.get_running_loop()
        if not self._queued:
            slot = self.pods.pick(loop.time())
            if slot is not None:
                return slot
        if self._queued >= self.max_queued:
            raise QueueFull(self.name)
        waiter: asyncio.Future[PodSlot] = loop.create_future()
        self._waiters.append(waiter)
        self._queued += 1
        self._poke_if_waiting()
        self._dispatch()
        try:
            async with asyncio.timeout_at(deadline):
                return await waiter
        except BaseException as exc:
            # A slot handed over just as the wait was cancelled is given back.
            if waiter.done() and not waiter.cancelled():
                self.release(waiter.result())
            if isinstance(exc, TimeoutError):
                raise HoldTimeout(self.name) from None
            raise
        finally:
            waiter.cancel()
            self._queued -= 1
            if self._queued == 0:
                self._poked = False
                self._waiters.clear()
            elif len(self._waiters) > 2 * self._queued + 64:
                self._waiters = deque(w for w in self._waiters if not w.done())

    def release(self, slot: PodSlot) -> None:
        slot.in_flight -= 1
        if self._waiters:
            self._dispatch()

    def unreachable(self, slot: PodSlot) -> None:
        """`slot`'s pod refused a connection: pass it over for a moment."""
        self.pods.mark_unreachable(slot, asyncio.get_running_loop().time())

    def _dispatch(self) -> None:
        waiters = self._waiters
        if not waiters:
            return
        now = asyncio.get_running_loop().time()
        while waiters:
            if waiters[0].done():
                waiters.popleft()
                continue
            slot = self.pods.pick(now)
            if slot is None:
                break
            waiters.popleft().set_result(slot)
        self._schedule_retry()

    def _schedule_retry(self) -> None:
        """Wake the queue when a pod passed over as unreachable may be tried again."""
        if self._retry is not None or not self._waiters:
            return
        at = self.pods.next_reachable_at()
        if at is None:
            return

        def retry() -> None:
            self._retry = None
            self._dispatch()

        self._retry = asyncio.get_running_loop().call_at(at, retry)
