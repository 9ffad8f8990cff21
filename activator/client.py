"""The activator's two streams to the control plane, each reconnected with back-off.

WatchEndpoints keeps `Revisions` in line with the control plane; while it is down the
activator goes on with the endpoints it last heard of. ReportStats sends every
revision's load each interval and a poke as soon as a request is held for a revision
with no ready pod; after a reconnect every revision still waiting is poked again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

import grpc
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential

from wakegate.activator.queue import RevisionQueue
from wakegate.activator.revisions import Revisions
from wakegate.proto.v1 import autoscaler_pb2 as pb
from wakegate.proto.v1 import autoscaler_pb2_grpc as pb_grpc

log = logging.getLogger("wakegate.activator.client")

_CHANNEL_OPTIONS = [
    ("grpc.enable_http_proxy", 0),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    # gRPC's own reconnect back-off grows to minutes; the retry loops here pace it instead.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2_000),
]


class _StreamDown(Exception):
    """A stream ended or failed before it was established."""


class ControlPlaneClient:
    """Keeps ReportStats and WatchEndpoints open to `target` (host:port)."""

    def __init__(
        self,
        target: str,
        revisions: Revisions,
        *,
        sender: str,
        stats_interval_s: float = 1.0,
        max_backoff_s: float = 5.0,
    ) -> None:
        self.target = target
        self.revisions = revisions
        self.sender = sender
        self.stats_interval_s = stats_interval_s
        self.max_backoff_s = max_backoff_s
        self.synced = asyncio.Event()
        """Set once the first full endpoint state arrived."""
        self.watching = False
        self.reporting = False
        self._pokes: dict[tuple[str, str], None] = {}
        self._wake = asyncio.Event()
        self._sequence = 0
        self._channel: grpc.aio.Channel | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def connected(self) -> bool:
        return self.watching and self.reporting

    def poke(self, queue: RevisionQueue) -> None:
        """Ask the control plane to scale `queue`'s revision from zero, right now."""
        self._pokes[(queue.namespace, queue.revision)] = None
        self._wake.set()

    async def start(self) -> None:
        self._channel = grpc.aio.insecure_channel(self.target, options=_CHANNEL_OPTIONS)
        stub = pb_grpc.AutoscalerStub(self._channel)
        self._tasks = [
            asyncio.create_task(self._keep("WatchEndpoints", lambda: self._watch(stub))),
            asyncio.create_task(self._keep("ReportStats", lambda: self._report(stub))),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    async def _keep(self, name: str, session: Callable[[], Awaitable[str]]) -> None:
        """Run `session` forever. It returns why a stream that had worked ended, which
        starts the back-off over; it raises when it could not establish one."""

        def before_sleep(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            delay = state.next_action.sleep if state.next_action else 0.0
            log.warning(
                "%s to control plane %s: %s; retrying in %.1fs",
                name,
                self.target,
                _describe(error),
                delay,
            )

        while True:
            async for attempt in AsyncRetrying(
                wait=wait_exponential(multiplier=0.1, min=0.1, max=self.max_backoff_s),
                retry=retry_if_exception_type(Exception),
                before_sleep=before_sleep,
            ):
                with attempt:
                    reason = await session()
            log.warning("%s to control plane %s lost: %s; reconnecting", name, self.target, reason)

    async def _watch(self, stub: pb_grpc.AutoscalerStub) -> str:
        call = stub.WatchEndpoints(pb.WatchRequest(sender=self.sender))
        reason = "the control plane ended the stream"
        try:
            async for update in call:
                self.revisions.apply(update)
                if update.full_state and not self.watching:
                    self.watching = True
                    self.synced.set()
                    log.info("watching endpoints at %s", self.target)
        except Exception as exc:
            if not self.watching:
                raise
            reason = _describe(exc)
        finally:
            call.cancel()
            established, self.watching = self.watching, False
        if not established:
            raise _StreamDown("stream closed before the first state")
        return reason

    async def _report(self, stub: pb_grpc.AutoscalerStub) -> str:
        call = stub.ReportStats()
        reason = "the control plane ended the stream"
        acks = asyncio.create_task(self._read_acks(call))
        acks.add_done_callback(lambda _: self._wake.set())
        for queue in self.revisions.waiting_for_pods():
            self._pokes[(queue.namespace, queue.revision)] = None
        next_tick = time.monotonic() + self.stats_interval_s
        try:
            # An empty batch opens the stream, so it is known to work before the first tick.
            await call.write(self._batch(pokes=True))
            while not acks.done():
                if self._pokes:
                    await call.write(self._batch(pokes=True))
                now = time.monotonic()
                if now >= next_tick:
                    await call.write(self._batch(pokes=False))
                    next_tick = max(next_tick + self.stats_interval_s, now)
                    continue
                self._wake.clear()
                if self._pokes or acks.done():
                    continue
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(next_tick - now):
                        await self._wake.wait()
            await acks
        except Exception as exc:
            if not self.reporting:
                raise
            reason = _describe(exc)
        finally:
            if acks.done() and not acks.cancelled():
                acks.exception()  # reported above or superseded by the write's error
            acks.cancel()
            call.cancel()
            established, self.reporting = self.reporting, False
        if not established:
            raise _StreamDown("stream closed before the first acknowledgement")
        return reason

    async def _read_acks(self, call: grpc.aio.StreamStreamCall) -> None:
        async for _ack in call:
            if not self.reporting:
                self.reporting = True
                log.info("reporting stats to %s", self.target)

    def _batch(self, *, pokes: bool) -> pb.StatBatch:
        self._sequence += 1
        batch = pb.StatBatch(
            sender=self.sender,
            sequence=self._sequence,
            timestamp_unix_ms=int(time.time() * 1000),
        )
        if pokes:
            batch.pokes.extend(pb.RevisionRef(namespace=n, revision=r) for n, r in self._pokes)
            self._pokes.clear()
            return batch
        seconds = 0.0
        for queue, load in self.revisions.take_stats():
            seconds = max(seconds, load.interval_s)
            batch.stats.append(
                pb.RevisionStat(
                    namespace=queue.namespace,
                    revision=queue.revision,
                    average_concurrency=load.concurrency,
                    request_count=load.requests,
                    queued=queue.queued,
                    in_flight=queue.in_flight,
                )
            )
        batch.interval_seconds = seconds or self.stats_interval_s
        return batch


def _describe(error: BaseException | None) -> str:
    if isinstance(error, grpc.aio.AioRpcError):
        return f"{error.code().name}: {error.details()}"
    return str(error) or type(error).__name__
