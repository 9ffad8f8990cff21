"""The activator's HTTP/2 cleartext (h2c) proxy: gRPC and other HTTP/2 end to end.

A revision whose port speaks HTTP/2 (named `h2c`) is reached through this listener
while the activator is in its path, so the gateway talks h2c to the activator and the
activator h2c to the pod (or to the revision's gate): streams, trailers (gRPC's status
travels in them), resets and flow control pass through as they are, nothing is
downgraded to HTTP/1.1. Requests are held and pods picked exactly as for HTTP/1.1 (see
`queue`): a stream waits for a slot, then goes to the least-loaded ready pod; a pod
that refuses the connection is passed over while nothing of the request was sent.

Built on the sans-I/O `h2` library: `_Connection` runs one HTTP/2 connection either way
(server side for the gateway's, client side for a pod's), `H2Pool` keeps connections to
pods, `H2Proxy` relays one stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from typing import cast

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
from hyperframe.frame import GoAwayFrame

from wakegate.activator.metrics import ActivatorMetrics
from wakegate.activator.queue import HoldTimeout, QueueFull, RevisionQueue
from wakegate.activator.revisions import Revisions
from wakegate.serving.headers import NAMESPACE_HEADER, REVISION_HEADER

log = logging.getLogger("wakegate.activator.h2c")

Headers = list[tuple[bytes, bytes]]

MAX_STREAMS = 10_000
"""Streams the gateway may open on one connection (held requests count)."""
WINDOW = 1 << 20
"""Flow-control window this side offers, per stream and per connection."""
MAX_ATTEMPTS = 5
_NAMESPACE = NAMESPACE_HEADER.lower().encode()
_REVISION = REVISION_HEADER.lower().encode()
_HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)


class _Unreachable(Exception):
    """No connection to the pod: the request can go to another one."""


class StreamReset(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(f"stream reset ({h2.errors.ErrorCodes(code).name})")
        self.code = code


class _Stream:
    """What arrives on one stream: its headers, data and trailers, or a reset."""

    def __init__(self, stream_id: int) -> None:
        self.id = stream_id
        self.headers: asyncio.Future[tuple[Headers, bool]] = (
            asyncio.get_running_loop().create_future()
        )
        """The head and whether it ended the stream."""
        self.chunks: asyncio.Queue[tuple[bytes, int] | None] = asyncio.Queue()
        """(data, flow-controlled length); None once the stream ended or was reset."""
        self.trailers: Headers | None = None
        self.reset: int | None = None
        self.window = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def fail(self, code: int) -> None:
        """The peer reset the stream (or the connection went): wake whoever waits."""
        self.reset = code
        if not self.headers.done():
            self.headers.set_exception(StreamReset(code))
            self.headers.exception()  # retrieved here if nobody waits for it
        self.chunks.put_nowait(None)
        self.window.set()
        if self.task is not None:
            self.task.cancel()


class _Connection(asyncio.Protocol):
    """One HTTP/2 connection with prior knowledge, server or client side."""

    def __init__(
        self,
        *,
        client_side: bool,
        on_request: Callable[[_Connection, _Stream], None] | None = None,
        on_closed: Callable[[_Connection], None] | None = None,
    ) -> None:
        config = h2.config.H2Configuration(client_side=client_side, header_encoding=None)
        self.conn = h2.connection.H2Connection(config)
        self.on_request = on_request
        self.on_closed = on_closed
        self.streams: dict[int, _Stream] = {}
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.closed = asyncio.Event()
        self.writable = asyncio.Event()
        self.writable.set()
        self.goaway = False

    # --- asyncio.Protocol ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; they behave as one.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if peer else ""
        self.conn.local_settings.update(
            {
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_STREAMS,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: WINDOW,
            }
        )
        self.conn.initiate_connection()
        self.conn.increment_flow_control_window(WINDOW)
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set()
        self.writable.set()
        for stream in list(self.streams.values()):
            if stream.reset is None:
                stream.fail(h2.errors.ErrorCodes.CANCEL)
        self.streams.clear()
        if self.on_closed is not None:
            self.on_closed(self)

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            log.info("HTTP/2 protocol error from %s: %s", self.peer, exc)
            self.flush()
            self.close()
            return
        for event in events:
            self._event(event)
        self.flush()

    def _event(self, event: h2.events.Event) -> None:
        stream = self.streams.get(getattr(event, "stream_id", 0) or 0)
        if isinstance(event, h2.events.RequestReceived):
            stream = self.streams[event.stream_id] = _Stream(event.stream_id)
            stream.headers.set_result((list(event.headers), event.stream_ended is not None))
            if self.on_request is not None:
                self.on_request(self, stream)
        elif isinstance(event, h2.events.ResponseReceived) and stream is not None:
            stream.headers.set_result((list(event.headers), event.stream_ended is not None))
        elif isinstance(event, h2.events.TrailersReceived) and stream is not None:
            stream.trailers = list(event.headers)
        elif isinstance(event, h2.events.DataReceived):
            if stream is not None:
                stream.chunks.put_nowait((event.data, event.flow_controlled_length))
            else:
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded) and stream is not None:
            stream.chunks.put_nowait(None)
        elif isinstance(event, h2.events.StreamReset) and stream is not None:
            stream.fail(event.error_code)
        elif isinstance(event, h2.events.WindowUpdated):
            targets = self.streams.values() if not event.stream_id else [stream]
            for target in targets:
                if target is not None:
                    target.window.set()
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            for target in self.streams.values():
                target.window.set()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaway = True
            if event.error_code:
                self.close()

    # --- sending -------------------------------------------------------------------

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def open_stream(self, headers: Headers, end_stream: bool) -> _Stream:
        stream_id = self.conn.get_next_available_stream_id()
        stream = self.streams[stream_id] = _Stream(stream_id)
        self.conn.send_headers(stream_id, headers, end_stream=end_stream)
        self.flush()
        return stream

    def send_headers(self, stream: _Stream, headers: Headers, *, end_stream: bool) -> None:
        self.conn.send_headers(stream.id, headers, end_stream=end_stream)
        self.flush()

    async def send_data(self, stream: _Stream, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if stream.reset is not None:
                raise StreamReset(stream.reset)
            if self.closed.is_set():
                raise ConnectionError("connection closed")
            window = min(self.conn.local_flow_control_window(stream.id), len(view))
            if window <= 0:
                stream.window.clear()
                await stream.window.wait()
                continue
            size = min(window, self.conn.max_outbound_frame_size)
            self.conn.send_data(stream.id, view[:size].tobytes())
            view = view[size:]
            self.flush()
            await self.writable.wait()

    def end_stream(self, stream: _Stream, trailers: Headers | None = None) -> None:
        if trailers:
            self.conn.send_headers(stream.id, trailers, end_stream=True)
        else:
            self.conn.end_stream(stream.id)
        self.flush()

    def acknowledge(self, stream: _Stream, length: int) -> None:
        if length and not self.closed.is_set():
            with contextlib.suppress(h2.exceptions.StreamClosedError, KeyError):
                self.conn.acknowledge_received_data(length, stream.id)
            self.flush()

    def reset(self, stream: _Stream, code: int = h2.errors.ErrorCodes.CANCEL) -> None:
        if stream.reset is None and not self.closed.is_set():
            with contextlib.suppress(h2.exceptions.ProtocolError, KeyError):
                self.conn.reset_stream(stream.id, code)
            self.flush()

    def forget(self, stream: _Stream) -> None:
        self.streams.pop(stream.id, None)

    @property
    def has_room(self) -> bool:
        return (
            not self.closed.is_set()
            and not self.goaway
            and self.conn.open_outbound_streams < self.conn.remote_settings.max_concurrent_streams
        )


class H2Pool:
    """h2c connections to pods (or gates), by host:port; a new one when none has room."""

    def __init__(self, connect_timeout_s: float) -> None:
        self.connect_timeout_s = connect_timeout_s
        self._connections: dict[str, list[_Connection]] = {}

    async def open(
        self, authority: str, headers: Headers, end_stream: bool
    ) -> tuple[_Connection, _Stream]:
        """A new stream to `authority` carrying `headers`."""
        connections = self._connections.setdefault(authority, [])
        connections[:] = [c for c in connections if not c.closed.is_set()]
        connection = next((c for c in connections if c.has_room), None)
        if connection is None:
            connection = await self._connect(authority)
            connections.append(connection)
        return connection, connection.open_stream(headers, end_stream)

    async def _connect(self, authority: str) -> _Connection:
        host, _, port = authority.rpartition(":")
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, protocol = await loop.create_connection(
                    lambda: _Connection(client_side=True),
                    host.strip("[]"),
                    int(port),
                )
        except (OSError, TimeoutError) as exc:
            raise _Unreachable(str(exc) or type(exc).__name__) from exc
        return protocol

    def close(self) -> None:
        for connections in self._connections.values():
            for connection in connections:
                connection.close()
        self._connections.clear()


def _header(headers: Headers, name: bytes) -> str:
    for key, value in headers:
        if key == name:
            return value.decode("latin-1")
    return ""


def _text(connection: _Connection, stream: _Stream, status: int, message: str) -> None:
    body = (message + "\n").encode()
    head = [
        (b":status", str(status).encode()),
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
    ]
    connection.send_headers(stream, head, end_stream=False)
    connection.conn.send_data(stream.id, body, end_stream=True)
    connection.flush()


class H2Proxy:
    """Serves h2c connections from the gateway; relays each stream to a pod."""

    def __init__(
        self, revisions: Revisions, metrics: ActivatorMetrics, *, connect_timeout_s: float
    ) -> None:
        self.revisions = revisions
        self.metrics = metrics
        self.pool = H2Pool(connect_timeout_s)
        self._connections: set[_Connection] = set()
        self._server: asyncio.Server | None = None

    async def start(
        self, host: str = "127.0.0.1", port: int = 0, *, sock: socket.socket | None = None
    ) -> int:
        """Listen on host:port, or on `sock`, a listening socket handed over; the port."""
        loop = asyncio.get_running_loop()

        def factory() -> _Connection:
            connection = _Connection(
                client_side=False, on_request=self._request, on_closed=self._connections.discard
            )
            self._connections.add(connection)
            return connection

        if sock is not None:
            self._server = await loop.create_server(factory, sock=sock, backlog=1024)
        else:
            self._server = await loop.create_server(factory, host, port, backlog=1024)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self, drain_timeout_s: float) -> None:
        """Stop accepting, let the streams in progress finish, then close.

        The GOAWAY is written by hand: h2's own `close_connection` would refuse every
        later frame of the streams it lets finish."""
        if self._server is not None:
            self._server.close()
        for connection in list(self._connections):
            connection.flush()
            last = connection.conn.highest_inbound_stream_id
            if connection.transport is not None and not connection.transport.is_closing():
                connection.transport.write(GoAwayFrame(last_stream_id=last).serialize())
        tasks = [s.task for c in self._connections for s in c.streams.values() if s.task]
        if tasks:
            await asyncio.wait(tasks, timeout=drain_timeout_s)
        for connection in list(self._connections):
            connection.close()
        self.pool.close()

    def _request(self, connection: _Connection, stream: _Stream) -> None:
        stream.task = asyncio.create_task(self._handle(connection, stream))
        stream.task.add_done_callback(lambda _: connection.forget(stream))

    async def _handle(self, down: _Connection, stream: _Stream) -> None:
        headers, _ = stream.headers.result()
        namespace, revision = _header(headers, _NAMESPACE), _header(headers, _REVISION)
        if not namespace or not revision:
            _text(down, stream, 400, f"missing {NAMESPACE_HEADER} or {REVISION_HEADER} header")
            return
        queue = self.revisions.get(namespace, revision)
        queue.request_started()
        code = "0"
        try:
            code = await self._serve(down, stream, headers, queue)
        except asyncio.CancelledError:
            code = "499"
            raise
        except (StreamReset, ConnectionError, h2.exceptions.H2Error) as exc:
            log.debug("stream of %s ended: %s", queue.name, exc)
            code = "499" if stream.reset is not None else "502"
            down.reset(stream, exc.code if isinstance(exc, StreamReset) else 2)
        finally:
            queue.request_finished()
            self.metrics.responses.labels(namespace, revision, code).inc()

    async def _serve(
        self, down: _Connection, stream: _Stream, headers: Headers, queue: RevisionQueue
    ) -> str:
        loop = asyncio.get_running_loop()
        arrived = loop.time()
        deadline = arrived + queue.hold_timeout_s
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                slot = await queue.acquire(deadline)
            except QueueFull:
                _text(down, stream, 503, f"activator queue full for {queue.name}")
                return "503"
            except HoldTimeout:
                reason = "no ready pod" if not queue.pods else "no pod with room"
                _text(
                    down, stream, 504, f"{reason} for {queue.name} within {queue.hold_timeout_s:g}s"
                )
                return "504"
            if attempt == 1:
                self.metrics.hold_seconds.observe(loop.time() - arrived)
            try:
                return await self._forward(down, stream, headers, queue.gate or slot.authority)
            except _Unreachable as exc:
                queue.unreachable(slot)
                if attempt == MAX_ATTEMPTS:
                    _text(down, stream, 502, f"cannot reach a pod of {queue.name}: {exc}")
                    return "502"
                self.metrics.retries.inc()
                log.info("%s: pod %s unreachable (%s); retrying", queue.name, slot.authority, exc)
            finally:
                queue.release(slot)
        raise AssertionError("unreachable")

    async def _forward(
        self, down: _Connection, stream: _Stream, headers: Headers, authority: str
    ) -> str:
        _, ended = stream.headers.result()
        upstream_headers = self._request_headers(headers, down.peer)
        up_conn, up = await self.pool.open(authority, upstream_headers, end_stream=ended)
        pump = (
            asyncio.create_task(self._pump_request(down, stream, up_conn, up))
            if not ended
            else None
        )
        try:
            head, head_ended = await up.headers
            status = _header(head, b":status")
            response = [(k, v) for k, v in head if k not in _HOP_BY_HOP]
            down.send_headers(stream, response, end_stream=head_ended)
            if not head_ended:
                while (item := await up.chunks.get()) is not None:
                    data, length = item
                    await down.send_data(stream, data)
                    up_conn.acknowledge(up, length)
                if up.reset is not None:
                    raise StreamReset(up.reset)
                down.end_stream(stream, up.trailers)
            if pump is not None:
                await pump
            return status or "0"
        except BaseException:
            up_conn.reset(up)
            raise
        finally:
            if pump is not None and not pump.done():
                pump.cancel()
                with contextlib.suppress(BaseException):
                    await pump
            up_conn.forget(up)

    @staticmethod
    async def _pump_request(
        down: _Connection, stream: _Stream, up_conn: _Connection, up: _Stream
    ) -> None:
        while (item := await stream.chunks.get()) is not None:
            data, length = item
            await up_conn.send_data(up, data)
            down.acknowledge(stream, length)
        if stream.reset is None and up.reset is None:
            up_conn.end_stream(up, stream.trailers)

    @staticmethod
    def _request_headers(headers: Headers, peer: str) -> Headers:
        out: Headers = []
        forwarded = b""
        for key, value in headers:
            if key in _HOP_BY_HOP or (key == b"te" and value.lower() != b"trailers"):
                continue
            if key == b"x-forwarded-for":
                forwarded = value
                continue
            out.append((key, value))
        if peer:
            value = (forwarded + b", " if forwarded else b"") + peer.encode()
            out.append((b"x-forwarded-for", value))
        return out
