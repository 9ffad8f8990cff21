"""The activator's HTTP/1.1 client to pods and gates: pooled keep-alive connections.

A lean client for the requests the activator forwards most: a head and a body already
in memory, one request at a time per connection, the response parsed by httptools
(llhttp, the parser of Node.js). It does per request a fraction of the work of
aiohttp's client, which the activator keeps for what this one does not do (streamed
request bodies, websockets).

Connections to a pod are kept open between requests, up to `max_idle` per pod, and
closed after `idle_timeout_s` unused. A request sent on a kept connection that the pod
closed meanwhile (nothing of a response came back) is sent again on a new connection.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import cast

import httptools

HIGH_WATER = 256 * 1024
"""Response bytes buffered from a pod before reading from it pauses."""
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
"""Header names (lowercase) that belong to one connection, never forwarded."""


def _whole(data: bytes, headers: int, body: int) -> bytes | None:
    """`data` if it is exactly one response of `headers` header lines and `body` body
    bytes, every line ending in CRLF (nothing else a parser might have tolerated)."""
    end = data.find(b"\r\n\r\n")
    if end < 0 or end + 4 + body != len(data):
        return None
    lines = data.count(b"\r\n", 0, end)
    if not lines == data.count(b"\n", 0, end) == data.count(b"\r", 0, end) == headers:
        return None
    return data


class ConnectFailed(Exception):
    """No connection to the pod (refused, unreachable, timed out)."""


class Disconnected(Exception):
    """The pod closed or broke the connection; `answered` says whether any of the
    response had come back."""

    def __init__(self, message: str, *, answered: bool) -> None:
        super().__init__(message)
        self.answered = answered


class Response:
    """One response: status, reason and headers at once, the body as it arrives."""

    def __init__(self, connection: PodConnection) -> None:
        self._connection = connection
        self.status = 0
        self.reason = ""
        self.headers: list[tuple[bytes, bytes]] = []
        self.keep_alive = False
        self.raw: bytes | None = None
        """The whole response as the pod sent it, when it can be relayed as it is: it
        came in one read, has a Content-Length and no hop-by-hop header but
        `Connection: keep-alive`."""
        self._plain = True
        """No header seen so far keeps the response from being relayed as it is."""
        self._length = False
        """A Content-Length header was seen."""
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self.complete = False
        self._error: BaseException | None = None
        self._readable: asyncio.Future[None] | None = None
        """Set while a reader waits for more of the body."""

    def _feed(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        self._wake()
        if self._buffered > HIGH_WATER:
            self._connection.pause()

    def _finish(self, error: BaseException | None = None) -> None:
        if error is None:
            self.complete = True
        elif not self.complete:
            self._error = error
        self._wake()

    def _wake(self) -> None:
        if self._readable is not None and not self._readable.done():
            self._readable.set_result(None)

    def body_now(self) -> bytes | None:
        """The whole body when all of it has arrived already, else None."""
        if not self.complete:
            return None
        body = b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        return body

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body, chunk by chunk; raises Disconnected if it broke off."""
        while True:
            while self._chunks:
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                if self._buffered <= HIGH_WATER // 2:
                    self._connection.resume()
                yield chunk
            if self.complete:
                return
            if self._error is not None:
                raise self._error
            self._readable = asyncio.get_running_loop().create_future()
            await self._readable

    def release(self) -> None:
        """Done with the response: its connection goes back to the pool when the whole
        response was read and both sides keep it alive, else it is closed."""
        self._connection.done(self)


class PodConnection(asyncio.Protocol):
    def __init__(self, pool: UpstreamPool, key: tuple[str, int]) -> None:
        self.pool = pool
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: Response | None = None
        self.headers_done: asyncio.Future[Response] | None = None
        self.closed = False
        self.idle_since = 0.0
        self._paused = False
        self._fresh = False
        """Nothing of the response to the request just sent has come yet."""
        self._answered: Callable[[Response | None], None] | None = None
        """`send_then`'s callback, until it was called."""
        self._until_close = False
        """The response's body ends when the connection does (no length, not chunked)."""

    # --- asyncio ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; they behave as one.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.response is None:
            self.close()  # nothing was asked: a pod must not speak first
            return
        response = self.response
        fresh, self._fresh = self._fresh, False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._broken(f"bad response from the pod: {exc}")
            return
        if fresh and response.complete and response._plain and response._length:
            response.raw = _whole(data, len(response.headers), response._buffered)
        answered = self._answered
        if answered is not None and self.response is not None and self.response.status:
            self._answered = None
            answered(self.response)

    def eof_received(self) -> bool | None:
        response = self.response
        if response is not None and response.status and self._until_close:
            response.keep_alive = False
            response._finish()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._broken(f"the pod closed the connection{f': {exc}' if exc else ''}")
        self.pool.forget(self)

    # --- httptools callbacks -----------------------------------------------------------

    def on_status(self, status: bytes) -> None:
        assert self.response is not None
        self.response.reason = status.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        response = self.response
        assert response is not None
        response.headers.append((name, value))
        lower = name.lower()
        if lower == b"content-length":
            response._length = True
        elif lower in HOP_BY_HOP and (
            lower != b"connection" or value.strip().lower() != b"keep-alive"
        ):
            response._plain = False

    def on_headers_complete(self) -> None:
        response = self.response
        assert response is not None
        status = self.parser.get_status_code()
        if status < 200:
            # An interim response (100 Continue, 103 Early Hints): wait for the real one.
            response.headers.clear()
            response._plain, response._length = False, False  # not to be relayed as it is
            return
        response.status = status
        if self.parser.get_http_version() != "1.1":
            response._plain = False  # its status line is rewritten
        response.keep_alive = self.parser.should_keep_alive()
        self._until_close = (
            status not in (204, 304)
            and not response._length
            and not any(name.lower() == b"transfer-encoding" for name, _ in response.headers)
        )
        if self.headers_done is not None and not self.headers_done.done():
            self.headers_done.set_result(response)

    def on_body(self, body: bytes) -> None:
        if self.response is not None and self.response.status:
            self.response._feed(body)

    def on_message_complete(self) -> None:
        response = self.response
        if response is not None and response.status:
            response.keep_alive = response.keep_alive and self.parser.should_keep_alive()
            response._finish()

    # --- use -----------------------------------------------------------------------------

    def send(self, data: bytes) -> Response:
        assert self.transport is not None
        self.response = Response(self)
        self._fresh = True
        self.headers_done = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return self.response

    def send_then(self, data: bytes, answered: Callable[[Response | None], None]) -> None:
        """Send one request; `answered(response)` once its status and headers came (with
        as much of the body as came with them), or when the connection broke after a
        part of them (status 0); `answered(None)` if it broke before any. No future, no
        task: for the activator's fast path."""
        assert self.transport is not None
        self.response = Response(self)
        self._fresh = True
        self._answered = answered
        self.transport.write(data)

    def _broken(self, message: str) -> None:
        response = self.response
        if response is None:
            return
        answered = response.status > 0 or bool(response.headers)
        error = Disconnected(message, answered=answered)
        if self.headers_done is not None and not self.headers_done.done():
            self.headers_done.set_exception(error)
        response._finish(error)
        self.close()
        callback, self._answered = self._answered, None
        if callback is not None:
            callback(response if answered else None)

    def pause(self) -> None:
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self._paused and self.transport is not None and not self.closed:
            self._paused = False
            self.transport.resume_reading()

    def done(self, response: Response) -> None:
        if response is not self.response:
            return
        self.response = None
        self.headers_done = None
        if response.complete and response.keep_alive and not self.closed:
            self.resume()
            self.pool.put_back(self)
        else:
            self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()


class UpstreamPool:
    """Keep-alive HTTP/1.1 connections to pods (and gates), by address."""

    def __init__(
        self, *, connect_timeout_s: float, max_idle: int = 256, idle_timeout_s: float = 30.0
    ) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.max_idle = max_idle
        self.idle_timeout_s = idle_timeout_s
        self._idle: dict[tuple[str, int], list[PodConnection]] = {}
        self._sweeper: asyncio.TimerHandle | None = None

    async def request(self, host: str, port: int, head: bytes, body: bytes) -> Response:
        """Send one request (its head, then `body`); the response once its headers came.

        Raises ConnectFailed when no connection could be made (nothing was sent), or
        Disconnected when the pod dropped the connection before its response's headers.
        """
        key = (host, port)
        idle = self._idle.get(key)
        while idle:
            connection = idle.pop()
            if connection.closed:
                continue
            try:
                return await self._exchange(connection, head, body)
            except Disconnected as exc:
                if exc.answered:
                    raise
                # The pod had closed the kept connection: try a new one.
        connection = await self._connect(key)
        return await self._exchange(connection, head, body)

    async def _exchange(self, connection: PodConnection, head: bytes, body: bytes) -> Response:
        connection.send(head + body if len(body) < 16384 else head)
        if len(body) >= 16384:
            assert connection.transport is not None
            connection.transport.write(body)
        assert connection.headers_done is not None
        try:
            return await connection.headers_done
        except asyncio.CancelledError:
            connection.close()  # its answer would come to nobody
            raise

    async def _connect(self, key: tuple[str, int]) -> PodConnection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, connection = await loop.create_connection(
                    lambda: PodConnection(self, key), key[0], key[1]
                )
        except TimeoutError:
            raise ConnectFailed(f"connect to {key[0]}:{key[1]} timed out") from None
        except OSError as exc:
            raise ConnectFailed(str(exc) or type(exc).__name__) from None
        return connection

    def take_idle(self, host: str, port: int) -> PodConnection | None:
        """A kept connection to host:port, if there is one, now."""
        idle = self._idle.get((host, port))
        while idle:
            connection = idle.pop()
            if not connection.closed:
                return connection
        return None

    def put_back(self, connection: PodConnection) -> None:
        idle = self._idle.setdefault(connection.key, [])
        if len(idle) >= self.max_idle:
            connection.close()
            return
        loop = asyncio.get_running_loop()
        connection.idle_since = loop.time()
        idle.append(connection)
        if self._sweeper is None:
            self._sweeper = loop.call_later(self.idle_timeout_s, self._sweep)

    def forget(self, connection: PodConnection) -> None:
        idle = self._idle.get(connection.key)
        if idle and connection in idle:
            idle.remove(connection)
            if not idle:
                del self._idle[connection.key]

    def _sweep(self) -> None:
        """Close connections idle for longer than `idle_timeout_s`."""
        self._sweeper = None
        now = asyncio.get_running_loop().time()
        for key, idle in list(self._idle.items()):
            for connection in [c for c in idle if now - c.idle_since >= self.idle_timeout_s]:
                idle.remove(connection)
                connection.close()
            if not idle:
                del self._idle[key]
        if self._idle:
            self._sweeper = asyncio.get_running_loop().call_later(self.idle_timeout_s, self._sweep)

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()
