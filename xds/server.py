"""The ADS gRPC server (state of the world and delta) over a `SnapshotCache`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import grpc
from envoy.config.core.v3.base_pb2 import Node
from envoy.service.discovery.v3 import discovery_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from wakegate.xds.cache import SnapshotCache
from wakegate.xds.delta import DeltaStream
from wakegate.xds.sotw import SotwStream, StreamBase, StreamError
from wakegate.xds.status import NodeStatus, StatusBoard

log = logging.getLogger("wakegate.xds")

ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"

_SERVER_OPTIONS = [
    # Gateways keep one long-lived, mostly idle stream and ping it.
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    # A second control plane on the same port must fail, not share the port.
    ("grpc.so_reuseport", 0),
]

_WAKE = object()
_EOF = object()


def node_cluster(node: Node) -> str:
    """The default node group: the gateway's `--service-cluster` (node.cluster)."""
    return node.cluster


def _passthrough(body: bytes | Any) -> bytes:
    if isinstance(body, bytes):
        return body
    return body.SerializeToString()


class XdsServer:
    """Serves each gateway the snapshot of its node group over ADS."""

    def __init__(
        self, cache: SnapshotCache, *, group_of: Callable[[Node], str] = node_cluster
    ) -> None:
        self._cache = cache
        self._group_of = group_of
        self._board = StatusBoard()
        self._streams: set[StreamBase] = set()
        self._changed = asyncio.Event()
        self._server: grpc.aio.Server | None = None
        self._health: health.aio.HealthServicer | None = None
        self.port: int | None = None

    @property
    def cache(self) -> SnapshotCache:
        return self._cache

    async def start(
        self,
        host: str = "127.0.0.1",
        port: int | None = 0,
        *,
        credentials: grpc.ServerCredentials | None = None,
        services: Sequence[Callable[[grpc.aio.Server], None]] = (),
        unix_socket: str | None = None,
    ) -> int:
        """Listen on `host:port` (0 picks a free port; None: no TCP) and on `unix_socket`
        if given (plain gRPC, made 0600); returns the bound TCP port (0 without one).

        `services` add further gRPC services to the same server (and port).
        """
        if self._server is not None:
            raise RuntimeError("XdsServer already started")
        server = grpc.aio.server(options=_SERVER_OPTIONS)
        handlers = {
            "StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(
                self._sotw,
                request_deserializer=discovery_pb2.DiscoveryRequest.FromString,
                response_serializer=_passthrough,
            ),
            "DeltaAggregatedResources": grpc.stream_stream_rpc_method_handler(
                self._delta,
                request_deserializer=discovery_pb2.DeltaDiscoveryRequest.FromString,
                response_serializer=_passthrough,
            ),
        }
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(ADS_SERVICE, handlers),)
        )
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        for add_service in services:
            add_service(server)
        bound = 0
        if port is not None:
            address = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
            try:
                if credentials is None:
                    bound = server.add_insecure_port(address)
                else:
                    bound = server.add_secure_port(address, credentials)
            except RuntimeError:
                bound = 0
            if not bound:
                raise OSError(f"cannot listen for xDS on {address}: address in use or unavailable")
        if unix_socket is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(unix_socket)
            try:
                listening = server.add_insecure_port(f"unix:{unix_socket}")
            except RuntimeError:
                listening = 0
            if not listening:
                raise OSError(f"cannot listen for xDS on unix socket {unix_socket}")
        await server.start()
        if unix_socket is not None:
            os.chmod(unix_socket, 0o600)
        serving = health_pb2.HealthCheckResponse.SERVING
        await self._health.set("", serving)
        await self._health.set(ADS_SERVICE, serving)
        self._server = server
        self.port = bound
        log.info("xDS server listening on %s", f"{host}:{bound}" if bound else unix_socket)
        return bound

    async def stop(self, grace: float | None = None) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        await server.stop(grace)

    def nodes(self) -> list[NodeStatus]:
        """Status of every gateway seen recently, connected or not."""
        return self._board.nodes()

    def current(self) -> dict[str, bool]:
        """Node id → whether that connected gateway has accepted its group's current
        snapshot (as `wait_acked` counts it)."""
        out: dict[str, bool] = {}
        for stream in self._streams:
            current = self._cache.current(stream.group) if stream.group else None
            if stream.node_id is None or current is None:
                continue
            seq, snapshot = current
            out[stream.node_id] = out.get(stream.node_id, True) and stream.acked_through(
                seq, snapshot
            )
        return out

    def connected(self, group: str | None = None, *, mode: str | None = None) -> int:
        """Open streams with an identified gateway, optionally of one group and mode
        ("sotw" or "delta")."""
        return sum(
            1
            for s in self._streams
            if (group is None or s.group == group) and (mode is None or s.mode == mode)
        )

    async def wait_acked(
        self,
        group: str,
        version: str,
        timeout: float,
        *,
        min_gateways: int = 1,
    ) -> bool:
        """Wait until every connected gateway of `group` accepted snapshot `version`.

        A gateway has accepted it when, for every type it subscribes to (and for
        listeners and clusters whenever the snapshot has any), it ACKed responses
        built from `version` or a later snapshot, or the state it already ACKed is
        what that snapshot would send it, and it has no rejected resource
        outstanding. At least `min_gateways` must be connected. False on timeout.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            changed = self._changed
            if self._all_acked(group, version, min_gateways):
                return True
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            try:
                async with asyncio.timeout(remaining):
                    await changed.wait()
            except TimeoutError:
                return self._all_acked(group, version, min_gateways)

    def _all_acked(self, group: str, version: str, min_gateways: int) -> bool:
        seq = self._cache.sequence(group, version)
        current = self._cache.current(group)
        if seq is None or current is None:
            return False
        snapshot = current[1]
        streams = [s for s in self._streams if s.group == group]
        if len(streams) < min_gateways:
            return False
        return all(s.acked_through(seq, snapshot) for s in streams)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _sotw(
        self,
        requests: AsyncIterator[discovery_pb2.DiscoveryRequest],
        context: grpc.aio.ServicerContext,
    ) -> None:
        stream = SotwStream(self._cache, self._board, self._group_of)
        await self._serve(stream, requests, context)

    async def _delta(
        self,
        requests: AsyncIterator[discovery_pb2.DeltaDiscoveryRequest],
        context: grpc.aio.ServicerContext,
    ) -> None:
        stream = DeltaStream(self._cache, self._board, self._group_of)
        await self._serve(stream, requests, context)

    async def _serve(
        self,
        stream: SotwStream | DeltaStream,
        requests: AsyncIterator[Any],
        context: grpc.aio.ServicerContext,
    ) -> None:
        queue: asyncio.Queue[object] = asyncio.Queue()
        wake_queued = False
        cancel_watch: Callable[[], None] | None = None

        def wake() -> None:
            nonlocal wake_queued
            if not wake_queued:
                wake_queued = True
                queue.put_nowait(_WAKE)

        def identified(s: StreamBase) -> None:
            nonlocal cancel_watch
            assert s.group is not None
            cancel_watch = self._cache.watch(s.group, wake)
            self._streams.add(s)
            log.info("gateway %s connected (group %s, %s)", s.node_id, s.group, s.mode)
            wake()

        async def pump() -> None:
            try:
                async for request in requests:
                    queue.put_nowait(request)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("ADS stream read ended: %r", exc)
            finally:
                queue.put_nowait(_EOF)

        stream.on_identify = identified
        reader = asyncio.create_task(pump())
        try:
            while True:
                item = await queue.get()
                if item is _EOF:
                    break
                if item is _WAKE:
                    wake_queued = False
                    out = stream.refresh()
                else:
                    try:
                        out = stream.handle(item)  # type: ignore[arg-type]
                    except StreamError as exc:
                        log.warning("closing ADS stream: %s", exc)
                        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
                        return
                    except Exception:
                        log.exception("bad ADS request from %s ignored", stream.node_id)
                        continue
                for body in out:
                    await context.write(body)
                self._notify()
        except asyncio.CancelledError:
            raise
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            log.debug("ADS stream to %s ended: %r", stream.node_id, exc)
        finally:
            reader.cancel()
            if cancel_watch is not None:
                cancel_watch()
            if stream in self._streams:
                self._streams.discard(stream)
                log.info("gateway %s disconnected (group %s)", stream.node_id, stream.group)
            stream.close()
            self._notify()
