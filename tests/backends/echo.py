"""Echo backend for the ingress conformance tests, run as a real process.

    python tests/backends/echo.py --port N --name NAME [--h2c | --grpc]

HTTP (default; with ``--h2c`` also HTTP/2 with prior knowledge on the same port):

- any path: 200 with JSON describing the request as this process saw it:
  ``name, method, path, query, args, host, headers, proto, body_length, body``
  (header names lower-cased, repeated headers joined with ", ", so an appended
  header is distinguishable from an overwritten one);
- ``?sleep=MS`` or ``/sleep/MS``: answer after MS milliseconds;
- ``/status/CODE``: answer CODE;
- ``/retry?key=K&fail=N[&code=C]``: answer C (503) the first N times for key K, then 200;
- ``/stream?chunks=N&interval=MS``: chunked body of N lines, one every MS milliseconds;
- ``/ws``: websocket; every text message comes back as ``NAME:message``.

``--grpc``: the ``wakegate.testing.PingService`` of ping.proto, answering ``NAME:msg``
(with ``x-backend-name`` trailing metadata, chosen status codes and server streaming).

Every request (HTTP or gRPC) counts as in flight while it is handled; each time that
count reaches a new peak the process prints ``PEAK <n>`` (a pod's log keeps it after the
pod stopped), and ``/peak`` answers ``{"peak": n}`` without counting itself.

Every response carries ``X-Backend-Name: NAME``. The process prints ``READY <port>``
once it listens (``--port 0`` picks a free port), and on SIGTERM or SIGINT stops
accepting, lets in-flight requests finish (up to ``--grace`` seconds) and exits 0.
``--port`` defaults to ``$PORT``, so the program also runs as a local-runtime pod.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import WSMsgType, web

# The generated ping modules are imported as ``tests.backends.*``, also when run as a script.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

NAME_HEADER = "X-Backend-Name"
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


@dataclass
class Request:
    """A request in protocol-neutral form."""

    method: str
    path: str
    query: str
    host: str
    headers: list[tuple[str, str]]
    body: bytes
    proto: str

    @property
    def args(self) -> dict[str, str]:
        return dict(parse_qsl(self.query, keep_blank_values=True))


@dataclass
class Reply:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    chunks: AsyncIterator[bytes] | None = None


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default


class Echo:
    """The behaviour shared by the HTTP/1.1 and HTTP/2 front ends."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.attempts: dict[str, int] = {}
        self.in_flight = 0
        self.peak = 0

    @contextlib.contextmanager
    def counted(self) -> Iterator[None]:
        """Count one request in flight for as long as the block runs."""
        self.in_flight += 1
        if self.in_flight > self.peak:
            self.peak = self.in_flight
            print(f"PEAK {self.peak}", flush=True)
        try:
            yield
        finally:
            self.in_flight -= 1

    def describe(self, req: Request) -> dict[str, Any]:
        headers: dict[str, str] = {}
        for key, value in req.headers:
            key = key.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        return {
            "name": self.name,
            "method": req.method,
            "path": req.path,
            "query": req.query,
            "args": req.args,
            "host": req.host,
            "headers": headers,
            "proto": req.proto,
            "body_length": len(req.body),
            "body": req.body.decode("utf-8", "replace"),
        }

    def _json(self, status: int, obj: dict[str, Any]) -> Reply:
        return Reply(status, json.dumps(obj).encode() + b"\n")

    async def handle(self, req: Request) -> Reply:
        if req.path == "/peak":
            return self._json(200, {"peak": self.peak, "in_flight": self.in_flight})
        with self.counted():
            return await self._handle(req)

    async def _handle(self, req: Request) -> Reply:
        args = req.args
        parts = req.path.strip("/").split("/")
        sleep_ms = _int(args.get("sleep"), 0)
        if parts[0] == "sleep" and len(parts) > 1:
            sleep_ms = _int(parts[1], sleep_ms)
        if sleep_ms > 0:
            await asyncio.sleep(sleep_ms / 1000)

        info = self.describe(req)
        if parts[0] == "status" and len(parts) > 1:
            status = _int(parts[1], 400)
            if not 200 <= status <= 599:
                status = 400
            if status in (204, 304):
                return Reply(status)
            return self._json(status, info)
        if parts[0] == "retry":
            key = args.get("key", "")
            attempt = self.attempts.get(key, 0) + 1
            self.attempts[key] = attempt
            failing = attempt <= _int(args.get("fail"), 1)
            info.update(key=key, attempt=attempt)
            return self._json(_int(args.get("code"), 503) if failing else 200, info)
        if parts[0] == "stream":
            chunks = _int(args.get("chunks"), 5)
            interval = _int(args.get("interval"), 50) / 1000
            return Reply(200, content_type="text/plain", chunks=self._lines(chunks, interval))
        return self._json(200, info)

    async def _lines(self, count: int, interval: float) -> AsyncIterator[bytes]:
        for i in range(count):
            if i:
                await asyncio.sleep(interval)
            yield f"{self.name} {i}\n".encode()


# HTTP/1.1 (aiohttp) -------------------------------------------------------------------


def make_app(echo: Echo, h2_connections: set[H2Connection], grace: float) -> web.Application:
    sockets: set[web.WebSocketResponse] = set()

    async def websocket(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        ws.headers[NAME_HEADER] = echo.name
        await ws.prepare(request)
        sockets.add(ws)
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    await ws.send_str(f"{echo.name}:{msg.data}")
                elif msg.type == WSMsgType.BINARY:
                    await ws.send_bytes(msg.data)
        finally:
            sockets.discard(ws)
        return ws

    async def handler(request: web.Request) -> web.StreamResponse:
        if request.path == "/ws" and request.headers.get("Upgrade", "").lower() == "websocket":
            return await websocket(request)
        req = Request(
            method=request.method,
            path=request.rel_url.raw_path,
            query=request.rel_url.raw_query_string,
            host=request.headers.get("Host", ""),
            headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers],
            body=await request.read(),
            proto=f"HTTP/{request.version.major}.{request.version.minor}",
        )
        reply = await echo.handle(req)
        headers = {NAME_HEADER: echo.name, "Content-Type": reply.content_type}
        if reply.chunks is None:
            return web.Response(status=reply.status, body=reply.body or None, headers=headers)
        resp = web.StreamResponse(status=reply.status, headers=headers)
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        async for chunk in reply.chunks:
            await resp.write(chunk)
        await resp.write_eof()
        return resp

    async def close_sockets(_: web.Application) -> None:
        for ws in list(sockets):
            await ws.close(code=1001, message=b"server shutting down")
        await asyncio.gather(*(c.shutdown(grace) for c in list(h2_connections)))

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    app.on_shutdown.append(close_sockets)
    return app


# HTTP/2 cleartext (h2) ------------------------------------------------------------------


@dataclass
class _Stream:
    headers: list[tuple[str, str]]
    body: bytearray = field(default_factory=bytearray)
    task: asyncio.Task[None] | None = None


class H2Connection(asyncio.Protocol):
    """One HTTP/2 connection (prior knowledge) served by ``Echo``."""

    def __init__(self, echo: Echo, connections: set[H2Connection]) -> None:
        import h2.config
        import h2.connection

        self.echo = echo
        self.connections = connections
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        )
        self.streams: dict[int, _Stream] = {}
        self.window_open = asyncio.Event()
        self.drained = asyncio.Event()
        self.closed = asyncio.Event()
        self.goaway_after: int | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.connections.add(self)
        self.conn.initiate_connection()
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.discard(self)
        for stream in self.streams.values():
            if stream.task is not None:
                stream.task.cancel()
        self.window_open.set()
        self.drained.set()
        self.closed.set()

    def data_received(self, data: bytes) -> None:
        import h2.errors
        import h2.events
        import h2.exceptions

        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            self._flush()
            self._close()
            return
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                if self.goaway_after is not None and event.stream_id > self.goaway_after:
                    self.conn.reset_stream(event.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
                else:
                    self.streams[event.stream_id] = _Stream(list(event.headers))
            elif isinstance(event, h2.events.DataReceived):
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    stream.body += event.data
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                stream = self.streams.get(event.stream_id)
                if stream is not None and stream.task is None:
                    stream.task = asyncio.create_task(self._respond(event.stream_id, stream))
            elif isinstance(event, h2.events.StreamReset):
                self._forget(event.stream_id)
            elif isinstance(event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
                self.window_open.set()
            elif isinstance(event, h2.events.ConnectionTerminated):
                self._close()
        self._flush()

    async def _respond(self, stream_id: int, stream: _Stream) -> None:
        import h2.exceptions

        pseudo = {k: v for k, v in stream.headers if k.startswith(":")}
        path, _, query = pseudo.get(":path", "/").partition("?")
        headers = [(k, v) for k, v in stream.headers if not k.startswith(":")]
        host = pseudo.get(":authority") or dict(headers).get("host", "")
        req = Request(
            pseudo.get(":method", "GET"), path, query, host, headers, bytes(stream.body), "HTTP/2.0"
        )
        try:
            reply = await self.echo.handle(req)
            head = [(":status", str(reply.status)), ("content-type", reply.content_type)]
            head.append((NAME_HEADER.lower(), self.echo.name))
            if reply.chunks is None:
                head.append(("content-length", str(len(reply.body))))
                self.conn.send_headers(stream_id, head, end_stream=not reply.body)
                self._flush()
                if reply.body:
                    await self._send(stream_id, reply.body, end=True)
            else:
                self.conn.send_headers(stream_id, head)
                self._flush()
                async for chunk in reply.chunks:
                    await self._send(stream_id, chunk, end=False)
                self.conn.end_stream(stream_id)
                self._flush()
        except h2.exceptions.StreamClosedError:
            pass
        finally:
            self.streams.pop(stream_id, None)
            if not self.streams:
                self.drained.set()

    async def _send(self, stream_id: int, data: bytes, *, end: bool) -> None:
        view = memoryview(data)
        while view:
            if self.closed.is_set():
                raise ConnectionError("connection closed")
            window = min(self.conn.local_flow_control_window(stream_id), len(view))
            if window <= 0:
                self.window_open.clear()
                await self.window_open.wait()
                continue
            size = min(window, self.conn.max_outbound_frame_size)
            self.conn.send_data(stream_id, view[:size].tobytes())
            view = view[size:]
            self._flush()
        if end:
            self.conn.end_stream(stream_id)
            self._flush()

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    async def shutdown(self, grace: float) -> None:
        """GOAWAY, let the streams already begun finish (up to ``grace`` s), then close.

        The GOAWAY is written by hand: h2's own ``close_connection`` would refuse every
        later frame of the streams it lets finish.
        """
        from hyperframe.frame import GoAwayFrame

        self.goaway_after = self.conn.highest_inbound_stream_id
        self._flush()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(GoAwayFrame(last_stream_id=self.goaway_after).serialize())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                while self.streams and not self.closed.is_set():
                    self.drained.clear()
                    await self.drained.wait()
        self.conn.close_connection()
        self._flush()
        self._close()

    def _forget(self, stream_id: int) -> None:
        stream = self.streams.pop(stream_id, None)
        if stream is not None and stream.task is not None:
            stream.task.cancel()
        if not self.streams:
            self.drained.set()


class Sniffer(asyncio.Protocol):
    """Hands a new connection to HTTP/2 or HTTP/1.1 by its first bytes."""

    def __init__(
        self, http1: Callable[[], asyncio.Protocol], http2: Callable[[], asyncio.Protocol]
    ) -> None:
        self.http1 = http1
        self.http2 = http2
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        n = min(len(self.buffer), len(H2_PREFACE))
        if self.buffer[:n] == H2_PREFACE[:n] and n < len(H2_PREFACE):
            return
        proto = self.http2() if self.buffer.startswith(H2_PREFACE) else self.http1()
        assert self.transport is not None
        self.transport.set_protocol(proto)
        proto.connection_made(self.transport)
        proto.data_received(self.buffer)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


class SniffingSite(web.BaseSite):
    """An aiohttp site whose connections may also speak HTTP/2 with prior knowledge."""

    __slots__ = ("_echo", "_h2_connections", "_host", "_port")

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        echo: Echo,
        h2_connections: set[H2Connection],
    ) -> None:
        super().__init__(runner)
        self._host = host
        self._port = port
        self._echo = echo
        self._h2_connections = h2_connections

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None

        def factory() -> Sniffer:
            return Sniffer(server, lambda: H2Connection(self._echo, self._h2_connections))

        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(factory, self._host, self._port)


# gRPC ---------------------------------------------------------------------------------


async def start_grpc(echo: Echo, host: str, port: int) -> tuple[Any, int]:
    import grpc

    from tests.backends import ping_pb2, ping_pb2_grpc

    class Ping(ping_pb2_grpc.PingServiceServicer):
        async def Ping(self, request: Any, context: Any) -> Any:
            with echo.counted():
                context.set_trailing_metadata(((NAME_HEADER.lower(), echo.name),))
                kind, _, rest = request.msg.partition(":")
                if kind == "status":
                    code, _, details = rest.partition(":")
                    await context.abort(grpc.StatusCode[code], details)
                if kind == "sleep":
                    await asyncio.sleep(_int(rest, 0) / 1000)
                return ping_pb2.PingResponse(msg=f"{echo.name}:{request.msg}")

        async def Count(self, request: Any, context: Any) -> AsyncIterator[Any]:
            with echo.counted():
                context.set_trailing_metadata(((NAME_HEADER.lower(), echo.name),))
                for i in range(request.count):
                    if i:
                        await asyncio.sleep(request.interval_ms / 1000)
                    yield ping_pb2.PingResponse(msg=f"{echo.name}:{request.msg}:{i}")

        async def PingStream(self, request_iterator: Any, context: Any) -> AsyncIterator[Any]:
            with echo.counted():
                async for request in request_iterator:
                    yield ping_pb2.PingResponse(msg=f"{echo.name}:{request.msg}")

    server = grpc.aio.server()
    ping_pb2_grpc.add_PingServiceServicer_to_server(Ping(), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    return server, bound


# main ---------------------------------------------------------------------------------


async def serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watcher = await _watch_stdin(stop.set) if args.stop_on_stdin_eof else None

    echo = Echo(args.name)
    shutdown: Callable[[], Awaitable[None]]
    if args.grpc:
        server, port = await start_grpc(echo, args.host, args.port)

        async def shutdown() -> None:
            await server.stop(args.grace)

    else:
        h2_connections: set[H2Connection] = set()
        app = make_app(echo, h2_connections, args.grace)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=args.grace)
        await runner.setup()
        site: SniffingSite | web.TCPSite
        if args.h2c:
            site = SniffingSite(runner, args.host, args.port, echo, h2_connections)
        else:
            site = web.TCPSite(runner, args.host, args.port)
        await site.start()
        port = site.port

        async def shutdown() -> None:
            await runner.cleanup()

    print(f"READY {port}", flush=True)
    await stop.wait()
    await shutdown()
    if watcher is not None:
        watcher.cancel()


async def _watch_stdin(on_eof: Callable[[], None]) -> asyncio.Task[None]:
    """Calls ``on_eof`` when stdin closes, i.e. when the parent that started us died."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def watch() -> None:
        while await reader.read(4096):
            pass
        on_eof()

    return loop.create_task(watch())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8080")))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--name", default=os.environ.get("BACKEND_NAME", "echo"))
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--h2c", action="store_true", help="also serve HTTP/2 prior knowledge")
    mode.add_argument("--grpc", action="store_true", help="serve the gRPC Ping service")
    parser.add_argument("--grace", type=float, default=10.0, help="seconds to drain on stop")
    parser.add_argument("--stop-on-stdin-eof", action="store_true", help="stop when stdin closes")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    asyncio.run(serve(parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
