"""The activator's HTTP/1.1 listener: a lean path for plain requests, aiohttp for the rest.

Nearly every request the gateway sends the activator is plain: HTTP/1.1, a body with a
Content-Length small enough to buffer (`buffer_limit`) or none, no upgrade, no
`Expect`. Those are parsed here with httptools and forwarded on the activator's own
keep-alive connections to pods (see `upstream`), with the same hold, pod choice,
retries, headers, metrics and cold-start accounting as `proxy.Activator`, at a
fraction of aiohttp's cost per request. The first request of a connection that is
not plain (a streamed or chunked body, HEAD, an upgrade or websocket, HTTP/1.0, the
activator's own `/healthz` and `/metrics`) hands the connection, from that request on,
to aiohttp's server, which serves it as `proxy.Activator` does.

When a pod has room and a kept connection to it is idle, a plain request is sent at
once and answered from that connection's callback when the pod's response head came:
no task, no future per request. Otherwise (the request must wait for a pod, a new
connection is needed, a retry, a response body that has not all arrived) a task per
request holds, connects, retries and streams.

Requests on one connection are answered in order. A request pipelined behind another
on the same read is served here only if it is plain; otherwise it is answered 400 and
the connection closed (the gateway never pipelines).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, NamedTuple, cast

import httptools

from wakegate.activator.metrics import ActivatorMetrics
from wakegate.activator.pods import PodSlot
from wakegate.activator.queue import HoldTimeout, QueueFull, RevisionQueue
from wakegate.activator.revisions import Revisions
from wakegate.activator.upstream import (
    HOP_BY_HOP,
    ConnectFailed,
    Disconnected,
    PodConnection,
    Response,
    UpstreamPool,
)
from wakegate.serving.headers import NAMESPACE_HEADER, REVISION_HEADER

log = logging.getLogger("wakegate.activator")

MAX_ATTEMPTS = 5
MAX_HEAD = 65536
"""Request line and headers, in bytes, beyond which a request is not plain."""
_NAMESPACE = NAMESPACE_HEADER.lower().encode()
_REVISION = REVISION_HEADER.lower().encode()
_XFF = b"x-forwarded-for"
_WATCHED = {
    **{name: "hop-by-hop" for name in HOP_BY_HOP},
    _XFF: "forwarded",
    _NAMESPACE: "namespace",
    _REVISION: "revision",
    b"content-length": "length",
    b"upgrade": "not plain",
    b"expect": "not plain",
    b"transfer-encoding": "not plain",
}
_PLAIN_METHODS = frozenset({b"GET", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS"})


class _HandOver(Exception):
    """The request is not plain: aiohttp takes the connection from it on."""


class _Request:
    __slots__ = (
        "body",
        "forwarded",
        "head",
        "headers",
        "keep_alive",
        "method",
        "namespace",
        "revision",
        "state",
        "target",
    )

    def __init__(self) -> None:
        self.method = b""
        self.target = bytearray()
        self.headers: list[tuple[bytes, bytes]] = []
        self.forwarded = 0
        """X-Forwarded-For headers; -1 once a hop-by-hop header was seen."""
        self.head: bytes | None = None
        """The request line and headers as the client sent them (no final CRLF), when
        they can be forwarded so (see `_forwarded_head`)."""
        self.body: list[bytes] = []
        self.keep_alive = True
        self.namespace = ""
        self.revision = ""
        self.state: dict[str, Any] = {}
        """What the cold-start accounting keeps per request."""


def _end_to_end(headers: list[tuple[bytes, bytes]], drop: frozenset[bytes]) -> list[bytes]:
    """`Name: value` lines without hop-by-hop headers (and those Connection names)."""
    drop = drop | HOP_BY_HOP
    lines = []
    named: list[bytes] = []
    for name, value in headers:
        lower = name.lower()
        if lower == b"connection":
            named += (token.strip().lower() for token in value.split(b","))
        if lower not in drop:
            lines.append((lower, name + b": " + value))
    if named:
        return [line for lower, line in lines if lower not in named]
    return [line for _, line in lines]


def _forwarded_head(raw: bytes | bytearray, headers: int) -> bytes | None:
    """The head at the start of `raw` (a request of `headers` header lines) without its
    final CRLF, if every line ends in CRLF (nothing else a parser might have tolerated)."""
    end = raw.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = raw.count(b"\r\n", 0, end)
    if not lines == raw.count(b"\n", 0, end) == raw.count(b"\r", 0, end) == headers:
        return None
    return bytes(raw[:end])


_XFF_LINE = re.compile(rb"\r\nx-forwarded-for:[ \t]*([^\r]*?)[ \t]*(?=\r\n|$)", re.IGNORECASE)


def _text(status: int, reason: str, message: str, keep_alive: bool) -> bytes:
    body = (message + "\n").encode()
    connection = b"keep-alive" if keep_alive else b"close"
    return b"".join(
        (
            f"HTTP/1.1 {status} {reason}\r\n".encode(),
            b"Content-Type: text/plain; charset=utf-8\r\n",
            f"Content-Length: {len(body)}\r\n".encode(),
            b"Connection: " + connection + b"\r\n\r\n",
            body,
        )
    )


class _Fast(NamedTuple):
    """A request on the fast path, sent and waiting for its answer."""

    request: _Request
    queue: RevisionQueue
    slot: PodSlot
    connection: PodConnection


class Http1(asyncio.Protocol):
    """One client connection (see the module's docstring)."""

    def __init__(
        self,
        revisions: Revisions,
        metrics: ActivatorMetrics,
        pool: UpstreamPool,
        fallback: Callable[[], asyncio.Protocol],
        connections: set[Http1],
        *,
        buffer_limit: int,
        on_gone: Callable[[], None] = lambda: None,
    ) -> None:
        self.on_gone = on_gone
        """Called when the connection closed."""
        self.revisions = revisions
        self.metrics = metrics
        self.pool = pool
        self.fallback = fallback
        self.connections = connections
        self.buffer_limit = buffer_limit
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.peer = ""
        self._request: _Request | None = None
        self._raw: bytes | bytearray | None = None
        """The bytes of the current request since it began, while it may be handed over."""
        self._feeding = False
        self._completed_in_feed = False
        self._current = b""
        self._ready: deque[_Request] = deque()
        self._task: asyncio.Task[None] | None = None
        self._fast: _Fast | None = None
        self._owed: Callable[[], None] | None = None
        self._handover: bytes | None = None
        self._refused = False
        self._writable = asyncio.Event()
        self._writable.set()
        self.closing = False

    # --- asyncio ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; they behave as one.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if peer else ""
        self.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.discard(self)
        self._writable.set()
        if self._task is not None:
            self._task.cancel()
        if self._fast is not None:
            self._fast.connection.close()  # its answer would come to nobody
        self.on_gone()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def data_received(self, data: bytes) -> None:
        if self._handover is not None:
            self._handover += data
            return
        if self._request is not None and self._raw is not None:
            if isinstance(self._raw, bytes):
                self._raw = bytearray(self._raw)  # a head over more than one read
            self._raw += data
        self._current = data
        self._feeding, self._completed_in_feed = True, False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._hand_over_when_idle()  # an upgrade the headers did not show
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _HandOver):
                self._hand_over_when_idle()
            else:
                message = "malformed HTTP/1.1 request"
                self._reply_and_close(_text(400, "Bad Request", message, False))
        finally:
            self._feeding = False
            self._current = b""
        self._next()

    # --- httptools callbacks -----------------------------------------------------------

    def on_message_begin(self) -> None:
        self._request = _Request()
        # A request that began inside a read after another one ended (pipelined)
        # cannot be handed over: where it starts in the read is not known.
        self._raw = None if self._completed_in_feed else self._current

    def on_url(self, url: bytes) -> None:
        assert self._request is not None
        self._request.target += url
        if len(self._request.target) > MAX_HEAD:
            raise _HandOver

    def on_header(self, name: bytes, value: bytes) -> None:
        request = self._request
        assert request is not None
        request.headers.append((name, value))
        kind = _WATCHED.get(name.lower())
        if kind is None:
            return
        if kind == "forwarded":
            if request.forwarded >= 0:
                request.forwarded += 1
        elif kind == "hop-by-hop":
            request.forwarded = -1
        elif kind == "namespace":
            request.namespace = value.decode("latin-1")
        elif kind == "revision":
            request.revision = value.decode("latin-1")
        elif kind == "length":
            try:
                too_big = int(value) > self.buffer_limit
            except ValueError:
                too_big = True
            if too_big:
                raise _HandOver
        else:
            raise _HandOver

    def on_headers_complete(self) -> None:
        request = self._request
        assert request is not None
        request.method = self.parser.get_method()
        request.keep_alive = self.parser.should_keep_alive()
        plain = (
            request.method in _PLAIN_METHODS
            and self.parser.get_http_version() == "1.1"
            and request.namespace
            and request.revision
        )
        if not plain or len(request.headers) > 100:
            raise _HandOver
        if self._raw is not None and 0 <= request.forwarded <= 1:
            request.head = _forwarded_head(self._raw, len(request.headers))
        self._raw = None  # a plain request is not handed over

    def on_body(self, body: bytes) -> None:
        assert self._request is not None
        self._request.body.append(body)

    def on_message_complete(self) -> None:
        request = self._request
        assert request is not None
        self._request = None
        self._raw = None
        self._completed_in_feed = self._feeding
        self._ready.append(request)

    # --- serving -------------------------------------------------------------------------

    def _next(self) -> None:
        if (
            self._task is not None
            or self._fast is not None
            or self.transport is None
            or self.transport.is_closing()
        ):
            return
        if self._ready:
            request = self._ready.popleft()
            if not self._serve_now(request):
                self._start(self._serve(request))
        elif self._handover is not None and self._refused:
            message = "a pipelined request must be plain HTTP/1.1 (a body of known length)"
            self._reply_and_close(_text(400, "Bad Request", message, False))
        elif self._handover is not None:
            self._hand_over()
        elif self.closing:
            self.transport.close()

    def _start(
        self, work: Coroutine[Any, Any, None], owed: Callable[[], None] | None = None
    ) -> None:
        """Run `work` as the connection's task. `owed` settles what was begun for it (a
        slot, the request's count) if the task is cancelled before it ever ran; `work`
        clears `_owed` as soon as it runs."""
        self._owed = owed
        self._task = asyncio.get_running_loop().create_task(work)
        self._task.add_done_callback(self._served)

    def _served(self, task: asyncio.Task[None]) -> None:
        self._task = None
        owed, self._owed = self._owed, None
        if owed is not None:
            owed()
        if not task.cancelled() and task.exception() is not None:
            log.error("serving a request failed", exc_info=task.exception())
            if self.transport is not None:
                self.transport.close()
            return
        self._next()

    def _hand_over_when_idle(self) -> None:
        """Once the requests before it are answered, hand the connection over from the
        request that is not plain; refuse it if it was pipelined."""
        self._refused = self._raw is None
        self._handover = b"" if self._raw is None else bytes(self._raw)
        self._raw = None

    def _hand_over(self) -> None:
        assert self.transport is not None and self._handover is not None
        data, self._handover = self._handover, None
        self.connections.discard(self)
        protocol = self.fallback()
        self.transport.set_protocol(protocol)
        protocol.connection_made(self.transport)
        protocol.data_received(data)

    def _reply_and_close(self, data: bytes) -> None:
        self._ready.clear()
        self._handover = None
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)
            self.transport.close()

    def _begin(self, request: _Request, queue: RevisionQueue | None = None) -> RevisionQueue:
        queue = queue or self.revisions.get(request.namespace, request.revision)
        self.metrics.cold_starts.arrived(request.state, queue)
        queue.request_started()
        return queue

    def _end(self, request: _Request, queue: RevisionQueue, code: int) -> None:
        queue.request_finished()
        self.metrics.response(request.namespace, request.revision, code)

    def _settle(self, request: _Request, queue: RevisionQueue, slot: PodSlot | None = None) -> None:
        """A begun request given up before its task ran (the client went away)."""
        if slot is not None:
            queue.release(slot)
        self._end(request, queue, 499)

    async def _serve(
        self, request: _Request, queue: RevisionQueue | None = None, slot: PodSlot | None = None
    ) -> None:
        self._owed = None
        queue = queue or self._begin(request)
        code = 0
        try:
            code = await self._forward(request, queue, slot)
        except asyncio.CancelledError:
            code = 499  # the client went away
            raise
        finally:
            self._end(request, queue, code)

    # --- the fast path: no task, no future ------------------------------------------------

    def _serve_now(self, request: _Request) -> bool:
        """When a pod has room and a kept connection to it (or to its gate) is idle, send
        the request at once and answer it from that connection's callback. False, with
        nothing done, otherwise: `_serve` then holds, connects and retries."""
        queue = self.revisions.get(request.namespace, request.revision)
        slot = queue.try_acquire()
        if slot is None:
            return False
        connection = self.pool.take_idle(*(queue.gate_address or (slot.ip, slot.port)))
        if connection is None:
            # The pod chosen keeps its slot: `_serve` connects to it.
            self._begin(request, queue)
            self._start(
                self._serve(request, queue, slot), lambda: self._settle(request, queue, slot)
            )
            return True
        self._begin(request, queue)
        self.metrics.hold_seconds.observe(0.0)
        self.metrics.cold_starts.forwarding(request.state)
        body = b"".join(request.body)
        self._fast = _Fast(request, queue, slot, connection)
        connection.send_then(self._head(request, body) + body, self._answered)
        return True

    def _answered(self, upstream: Response | None) -> None:
        fast, self._fast = self._fast, None
        assert fast is not None
        request, queue, slot = fast.request, fast.queue, fast.slot
        gone = self.transport is None or self.transport.is_closing()
        if upstream is None or not upstream.status or gone:
            # Gone, or nothing (or a part of a head) came back on the kept connection.
            queue.release(slot)
            if gone:
                if upstream is not None:
                    upstream.release()  # kept if whole, else closed
                self._end(request, queue, 499)
            elif upstream is None:
                # A new connection, and retries.
                self._start(self._serve(request, queue), lambda: self._settle(request, queue))
            else:
                authority = queue.gate or slot.authority
                self._answer(request, 502, f"pod {authority}: broke off its answer")
                self._end(request, queue, 502)
                self._next()
            return
        if not upstream.complete:
            self._start(
                self._stream(request, queue, slot, upstream),
                lambda: (upstream.release(), self._settle(request, queue, slot)),
            )
            return
        try:
            self._write_head(request, upstream, upstream.body_now())
        finally:
            upstream.release()
            queue.release(slot)
        self._end(request, queue, upstream.status)
        self._next()

    async def _stream(
        self, request: _Request, queue: RevisionQueue, slot: PodSlot, upstream: Response
    ) -> None:
        self._owed = None
        code = 499
        try:
            await self._relay(request, upstream)
            code = upstream.status
        finally:
            upstream.release()
            queue.release(slot)
            self._end(request, queue, code)

    async def _forward(
        self, request: _Request, queue: RevisionQueue, taken: PodSlot | None = None
    ) -> int:
        """Hold the request until a pod has room (unless `taken` is a slot it has
        already), forward it, retry on another pod while none answered."""
        loop = asyncio.get_running_loop()
        arrived = loop.time()
        deadline = arrived + queue.hold_timeout_s
        body = b"".join(request.body)
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                slot = taken or queue.try_acquire() or await queue.acquire(deadline)
                taken = None
            except QueueFull:
                return self._answer(request, 503, f"activator queue full for {queue.name}")
            except HoldTimeout:
                reason = "no ready pod" if not queue.pods else "no pod with room"
                message = f"{reason} for {queue.name} within {queue.hold_timeout_s:g}s"
                return self._answer(request, 504, message)
            if attempt == 1:
                self.metrics.hold_seconds.observe(loop.time() - arrived)
            try:
                host, port = queue.gate_address or (slot.ip, slot.port)
                self.metrics.cold_starts.forwarding(request.state)
                try:
                    upstream = await self.pool.request(host, port, self._head(request, body), body)
                except (ConnectFailed, Disconnected) as exc:
                    authority = queue.gate or slot.authority
                    if isinstance(exc, Disconnected) and exc.answered:
                        return self._answer(request, 502, f"pod {authority}: {exc}")
                    queue.unreachable(slot)
                    if attempt == MAX_ATTEMPTS:
                        message = f"cannot reach a pod of {queue.name}: {exc}"
                        return self._answer(request, 502, message)
                    self.metrics.retries.inc()
                    log.info("%s: pod %s unreachable (%s); retrying", queue.name, authority, exc)
                    continue
                try:
                    await self._relay(request, upstream)
                finally:
                    upstream.release()
                return upstream.status
            finally:
                queue.release(slot)
        raise AssertionError("unreachable")

    def _head(self, request: _Request, body: bytes) -> bytes:
        head = request.head
        if head is not None:
            # As the client sent it, X-Forwarded-For (at most one) moved to the end with
            # the client's address added, as below.
            if request.forwarded:
                match = _XFF_LINE.search(head)
                if match is not None:
                    forwarded = match.group(1)
                    head = head[: match.start()] + head[match.end() :]
                    if self.peer:
                        forwarded += b", " + self.peer.encode()
                    return head + b"\r\nX-Forwarded-For: " + forwarded + b"\r\n\r\n"
            elif self.peer:
                return head + b"\r\nX-Forwarded-For: " + self.peer.encode() + b"\r\n\r\n"
            else:
                return head + b"\r\n\r\n"
        forwarded = [v for n, v in request.headers if n.lower() == b"x-forwarded-for"]
        lines = [request.method + b" " + bytes(request.target) + b" HTTP/1.1"]
        lines += _end_to_end(request.headers, frozenset({b"x-forwarded-for"}))
        if self.peer:
            lines.append(b"X-Forwarded-For: " + b", ".join([*forwarded, self.peer.encode()]))
        elif forwarded:
            lines.append(b"X-Forwarded-For: " + b", ".join(forwarded))
        return b"\r\n".join(lines) + b"\r\n\r\n"

    def _answer(self, request: _Request, status: int, message: str) -> int:
        reason = {502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}
        assert self.transport is not None
        self.transport.write(_text(status, reason[status], message, request.keep_alive))
        if not request.keep_alive:
            self.closing = True
        return status

    def _write_head(
        self, request: _Request, upstream: Response, whole: bytes | None
    ) -> bytes | None:
        """Write the response's head (and its body, when `whole`); the body's
        Content-Length value when it is to follow, None when chunked."""
        transport = self.transport
        assert transport is not None
        self.metrics.cold_starts.on_response(request.state)
        if upstream.raw is not None and request.keep_alive:
            # The pod's response, whole, kept alive and with nothing hop-by-hop to drop.
            transport.write(upstream.raw)
            return None
        lines = [f"HTTP/1.1 {upstream.status} {upstream.reason}".encode()]
        lines += _end_to_end(upstream.headers, frozenset({b"content-length"}))
        lines.append(b"Connection: keep-alive" if request.keep_alive else b"Connection: close")
        if not request.keep_alive:
            self.closing = True
        if whole is not None:
            if upstream.status not in (204, 304):
                lines.append(b"Content-Length: " + str(len(whole)).encode())
            transport.write(b"\r\n".join(lines) + b"\r\n\r\n" + whole)
            return None
        length = next((v for n, v in upstream.headers if n.lower() == b"content-length"), None)
        lines.append(b"Content-Length: " + length if length else b"Transfer-Encoding: chunked")
        transport.write(b"\r\n".join(lines) + b"\r\n\r\n")
        return length

    async def _relay(self, request: _Request, upstream: Response) -> None:
        transport = self.transport
        assert transport is not None
        whole = upstream.body_now()
        length = self._write_head(request, upstream, whole)
        if whole is None:
            try:
                async for chunk in upstream.chunks():
                    if not chunk:
                        continue
                    if length is None:
                        chunk = b"%x\r\n%s\r\n" % (len(chunk), chunk)
                    transport.write(chunk)
                    if not self._writable.is_set():
                        await self._writable.wait()
                    if transport.is_closing():
                        return
            except Disconnected as exc:
                # The status line is out: cutting the connection is the only way left to
                # tell the client the body is not whole.
                log.warning("pod response for %s broke off: %s", bytes(request.target), exc)
                transport.close()
                return
            if length is None:
                transport.write(b"0\r\n\r\n")
        if not request.keep_alive:
            self.closing = True


class Http1Server:
    """The listener: lean connections, handed to aiohttp's `server` when not plain."""

    def __init__(
        self,
        revisions: Revisions,
        metrics: ActivatorMetrics,
        pool: UpstreamPool,
        fallback: Callable[[], asyncio.Protocol],
        *,
        buffer_limit: int,
    ) -> None:
        self._factory = lambda: Http1(
            revisions,
            metrics,
            pool,
            fallback,
            self.connections,
            buffer_limit=buffer_limit,
            on_gone=self._gone.set,
        )
        self.connections: set[Http1] = set()
        self._server: asyncio.Server | None = None
        self._gone = asyncio.Event()

    async def start(self, sock: Any) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._factory, sock=sock)

    async def stop(self, timeout_s: float) -> None:
        """Stop accepting; let requests in progress finish for up to `timeout_s`."""
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            connection.closing = True
            connection._next()  # an idle one closes now, a busy one after its request
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while self.connections:
                    self._gone.clear()
                    await self._gone.wait()
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.close()
