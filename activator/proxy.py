"""The activator's HTTP/1.1 reverse proxy.

The gateway names the target revision in `Knative-Serving-Namespace` and
`Knative-Serving-Revision`. A request is held until a pod of that revision has room
(see `queue`), then forwarded to the least-loaded ready pod with both bodies streamed;
for a revision with a `containerConcurrency` it goes through the revision's gate in the
gateway instead, which holds every pod to that limit whoever sends to it (see
`wakegate.xds.gate`). HTTP/2 (h2c, gRPC) revisions are served by `h2c`.
`Host` is kept, hop-by-hop headers are dropped and `X-Forwarded-For` gains the peer.

A pod that refuses the connection (it has just stopped) is passed over and the request
goes to another pod, as long as nothing of the request body was consumed yet; a pod
that drops an established connection before answering gets the request again only when
its body was empty or small enough to be buffered (`buffer_limit`).

Requests whose body is empty or buffered go out on the activator's own keep-alive
connections (`upstream`), the rest (streamed bodies, HEAD, upgrades, websockets)
through aiohttp's client.

Requests without the two headers are the activator's own: `GET /healthz` and
`GET /metrics` (Prometheus); anything else is a 400.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import WSMsgType, web
from multidict import CIMultiDict
from yarl import URL

from wakegate.activator.metrics import ActivatorMetrics
from wakegate.activator.pods import PodSlot
from wakegate.activator.queue import HoldTimeout, QueueFull, RevisionQueue
from wakegate.activator.revisions import Revisions
from wakegate.activator.upstream import ConnectFailed, Disconnected, UpstreamPool
from wakegate.serving.headers import NAMESPACE_HEADER, REVISION_HEADER

log = logging.getLogger("wakegate.activator")

DEFAULT_BUFFER_LIMIT = 64 * 1024
DEFAULT_CONNECT_TIMEOUT_S = 5.0
MAX_ATTEMPTS = 5

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_WEBSOCKET_HANDSHAKE = frozenset(
    {
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-protocol",
        "sec-websocket-accept",
    }
)


class _PodUnreachable(Exception):
    """The pod could not take the request, and it can go to another pod."""


class _RequestBody:
    """The client's request body: absent, buffered (replayable) or streamed once."""

    def __init__(self, request: web.Request, buffered: bytes | None) -> None:
        self._request = request
        self._buffered = buffered
        self.started = False

    @property
    def replayable(self) -> bool:
        return self._buffered is not None or not self._request.body_exists

    @property
    def in_memory(self) -> bytes | None:
        """The whole body when it is empty or buffered, else None."""
        if self._buffered is not None:
            return self._buffered
        return None if self._request.body_exists else b""

    def data(self) -> bytes | AsyncIterator[bytes] | None:
        if self._buffered is not None:
            return self._buffered
        if not self._request.body_exists:
            return None
        return self._stream()

    async def _stream(self) -> AsyncIterator[bytes]:
        self.started = True
        async for chunk in self._request.content.iter_any():
            yield chunk


def _end_to_end(
    headers: CIMultiDict[str], *, drop: frozenset[str] = frozenset()
) -> CIMultiDict[str]:
    """`headers` without hop-by-hop ones, including those the Connection header names."""
    tokens = {t.strip().lower() for v in headers.getall("Connection", []) for t in v.split(",")}
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        lower = name.lower()
        if lower in HOP_BY_HOP or lower in tokens or lower in drop:
            continue
        out.add(name, value)
    return out


def _text(status: int, message: str) -> web.Response:
    return web.Response(status=status, text=message + "\n")


class Activator:
    """Forwards each request to a ready pod of its revision, holding it until one has room."""

    def __init__(
        self,
        revisions: Revisions,
        metrics: ActivatorMetrics,
        *,
        buffer_limit: int = DEFAULT_BUFFER_LIMIT,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
    ) -> None:
        self.revisions = revisions
        self.metrics = metrics
        self.buffer_limit = buffer_limit
        self.connect_timeout_s = connect_timeout_s
        self._session: aiohttp.ClientSession | None = None
        self.pool = UpstreamPool(connect_timeout_s=connect_timeout_s)

    def application(self) -> web.Application:
        app = web.Application(
            client_max_size=max(self.buffer_limit, 1024),
            handler_args={"max_field_size": 65536, "max_line_size": 65536},
        )
        app.router.add_route("*", "/{tail:.*}", self.handle)
        app.on_response_prepare.append(self.metrics.cold_starts.on_response_prepare)
        app.on_startup.append(self._open)
        app.on_cleanup.append(self._close)
        return app

    async def _open(self, _: web.Application) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout_s),
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            max_field_size=65536,
            max_line_size=65536,
        )

    async def _close(self, _: web.Application) -> None:
        self.pool.close()
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "the application has not started"
        return self._session

    async def handle(self, request: web.Request) -> web.StreamResponse:
        namespace = request.headers.get(NAMESPACE_HEADER, "")
        revision = request.headers.get(REVISION_HEADER, "")
        if not namespace or not revision:
            return self._own(request)
        queue = self.revisions.get(namespace, revision)
        self.metrics.cold_starts.arrived(request, queue)
        queue.request_started()
        code = 0
        try:
            response = await self._serve(request, queue)
            code = response.status
            return response
        except asyncio.CancelledError:
            code = 499  # the client went away
            raise
        finally:
            queue.request_finished()
            self.metrics.response(namespace, revision, code)

    def _own(self, request: web.Request) -> web.Response:
        if request.method in ("GET", "HEAD"):
            if request.path == "/healthz":
                return _text(200, "ok")
            if request.path == "/metrics":
                body, content_type = self.metrics.render()
                response = web.Response(body=body)
                response.headers["Content-Type"] = content_type
                return response
        return _text(
            400,
            f"missing {NAMESPACE_HEADER} or {REVISION_HEADER} header: the activator serves "
            "requests the gateway routes to a revision",
        )

    async def _serve(self, request: web.Request, queue: RevisionQueue) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        arrived = loop.time()
        deadline = arrived + queue.hold_timeout_s
        body: _RequestBody | None = None
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                slot = await queue.acquire(deadline)
            except QueueFull:
                return _text(503, f"activator queue full for {queue.name}")
            except HoldTimeout:
                reason = "no ready pod" if not queue.pods else "no pod with room"
                return _text(504, f"{reason} for {queue.name} within {queue.hold_timeout_s:g}s")
            if attempt == 1:
                self.metrics.hold_seconds.observe(loop.time() - arrived)
            try:
                if body is None:
                    body = await self._body(request)
                return await self._forward(request, slot, body, queue.gate)
            except _PodUnreachable as exc:
                queue.unreachable(slot)
                if attempt == MAX_ATTEMPTS:
                    return _text(502, f"cannot reach a pod of {queue.name}: {exc}")
                self.metrics.retries.inc()
                log.info("%s: pod %s unreachable (%s); retrying", queue.name, slot.authority, exc)
            finally:
                queue.release(slot)
        raise AssertionError("unreachable")

    async def _body(self, request: web.Request) -> _RequestBody:
        length = request.content_length
        if request.body_exists and length is not None and length <= self.buffer_limit:
            return _RequestBody(request, await request.read())
        return _RequestBody(request, None)

    async def _forward(
        self, request: web.Request, slot: PodSlot, body: _RequestBody, gate: str | None = None
    ) -> web.StreamResponse:
        """Send the request to the slot's pod, or through the revision's gate, which then
        picks the pod and holds it to `containerConcurrency`."""
        self.metrics.cold_starts.forwarding(request)
        url = URL(f"http://{gate or slot.authority}{request.raw_path}", encoded=True)
        headers = _end_to_end(CIMultiDict(request.headers), drop=frozenset({"expect"}))
        forwarded = request.headers.getall("X-Forwarded-For", [])
        if request.remote:
            headers["X-Forwarded-For"] = ", ".join([*forwarded, request.remote])
        if request.method == "GET" and request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._websocket(request, url, headers)
        data = body.in_memory
        if data is not None and request.method != "HEAD" and "Upgrade" not in request.headers:
            return await self._forward_pooled(request, gate or slot.authority, headers, data)
        try:
            upstream = await self.session.request(
                request.method,
                url,
                headers=headers,
                data=body.data(),
                allow_redirects=False,
                compress=None,
            )
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            if body.started:
                return _text(502, f"pod {slot.authority}: {exc}")
            raise _PodUnreachable(str(exc) or type(exc).__name__) from exc
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
            if body.replayable:
                raise _PodUnreachable(str(exc) or type(exc).__name__) from exc
            return _text(502, f"pod {slot.authority} closed the connection: {exc}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            return _text(502, f"pod {slot.authority}: {exc or type(exc).__name__}")
        try:
            return await self._relay(request, upstream)
        finally:
            upstream.release()

    async def _forward_pooled(
        self, request: web.Request, authority: str, headers: CIMultiDict[str], body: bytes
    ) -> web.StreamResponse:
        """Forward over the activator's own keep-alive connections (see `upstream`)."""
        host, _, port = authority.rpartition(":")
        if body:
            headers["Content-Length"] = str(len(body))
        lines = [f"{request.method} {request.raw_path} HTTP/1.1"]
        lines.extend(f"{name}: {value}" for name, value in headers.items())
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")
        try:
            upstream = await self.pool.request(host.strip("[]"), int(port), head, body)
        except ConnectFailed as exc:
            raise _PodUnreachable(str(exc)) from exc
        except Disconnected as exc:
            if not exc.answered:
                raise _PodUnreachable(str(exc)) from exc
            return _text(502, f"pod {authority}: {exc}")
        try:
            out: CIMultiDict[str] = CIMultiDict(
                (name.decode("latin-1"), value.decode("latin-1"))
                for name, value in upstream.headers
            )
            out = _end_to_end(out)
            whole = upstream.body_now()
            if whole is not None:
                return web.Response(
                    status=upstream.status, reason=upstream.reason, headers=out, body=whole
                )
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            response.headers.extend(out)
            await response.prepare(request)
            try:
                async for chunk in upstream.chunks():
                    await response.write(chunk)
            except Disconnected as exc:
                log.warning("pod response for %s broke off: %s", request.path, exc)
                if request.transport is not None:
                    request.transport.close()
                return response
            except ConnectionError:
                return response  # the client went away
            await response.write_eof()
            return response
        finally:
            upstream.release()

    async def _relay(
        self, request: web.Request, upstream: aiohttp.ClientResponse
    ) -> web.StreamResponse:
        headers = _end_to_end(CIMultiDict(upstream.headers))
        if upstream.content.is_eof():
            # The whole body is here already: one write for the headers and the body.
            body = await upstream.read()
            return web.Response(
                status=upstream.status, reason=upstream.reason, headers=headers, body=body
            )
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        response.headers.extend(headers)
        await response.prepare(request)
        while True:
            try:
                chunk = await upstream.content.readany()
            except (aiohttp.ClientError, TimeoutError) as exc:
                # The status line is out: the only way left to tell the client is to cut
                # the connection, so a truncated body is not taken for a whole one.
                log.warning("pod response for %s broke off: %s", request.path, exc)
                upstream.close()
                if request.transport is not None:
                    request.transport.close()
                return response
            if not chunk:
                break
            try:
                await response.write(chunk)
            except ConnectionError:
                upstream.close()  # the client went away
                return response
        await response.write_eof()
        return response

    async def _websocket(
        self, request: web.Request, url: URL, headers: CIMultiDict[str]
    ) -> web.StreamResponse:
        protocols = [
            p.strip()
            for v in request.headers.getall("Sec-WebSocket-Protocol", [])
            for p in v.split(",")
            if p.strip()
        ]
        for name in list(headers):
            if name.lower() in _WEBSOCKET_HANDSHAKE:
                headers.popall(name, None)
        try:
            upstream = await self.session.ws_connect(
                url,
                headers=headers,
                protocols=protocols,
                autoclose=False,
                autoping=False,
                max_msg_size=0,
            )
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            raise _PodUnreachable(str(exc) or type(exc).__name__) from exc
        except aiohttp.WSServerHandshakeError as exc:
            return _text(502, f"websocket handshake with the pod failed: {exc.status}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            return _text(502, f"websocket to the pod failed: {exc or type(exc).__name__}")
        client = web.WebSocketResponse(
            protocols=[upstream.protocol] if upstream.protocol else (),
            autoclose=False,
            autoping=False,
            max_msg_size=0,
        )
        try:
            await client.prepare(request)
            pumps = [
                asyncio.create_task(_pump(client, upstream)),
                asyncio.create_task(_pump(upstream, client)),
            ]
            try:
                await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
                # Let the other side finish its closing handshake.
                await asyncio.wait(pumps, timeout=1.0)
            finally:
                for pump in pumps:
                    pump.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
        finally:
            await upstream.close()
            await client.close()
        return client


WebSocket = web.WebSocketResponse | aiohttp.ClientWebSocketResponse


async def _pump(source: WebSocket, sink: WebSocket) -> None:
    """Copy messages from `source` to `sink` until `source` closes, then close `sink`."""
    while True:
        message = await source.receive()
        kind = message.type
        with contextlib.suppress(ConnectionError):
            if kind == WSMsgType.TEXT:
                await sink.send_str(message.data)
            elif kind == WSMsgType.BINARY:
                await sink.send_bytes(message.data)
            elif kind == WSMsgType.PING:
                await sink.ping(message.data)
            elif kind == WSMsgType.PONG:
                await sink.pong(message.data)
            elif kind == WSMsgType.CLOSE:
                await sink.close(code=message.data, message=(message.extra or "").encode())
                return
            else:
                await sink.close()
                return
