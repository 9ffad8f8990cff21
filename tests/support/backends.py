"""Start the echo backend (tests/backends/echo.py) as real processes, and talk to them.

    async with start_backend("blue") as b:          # b.name, b.port, b.address, b.url
        status, body, headers = await get(b.url + "/x", host="blue.example.com")

    async with start_backends("blue", "green") as (blue, green): ...

The client helpers work the same against a backend or a gateway: pass the address
actually dialled in ``url``/``address`` and the virtual host in ``host``/``authority``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import grpc
import h2.config
import h2.connection
import h2.events
from multidict import CIMultiDict

from tests.backends import ping_pb2, ping_pb2_grpc

ECHO = Path(__file__).resolve().parents[1] / "backends" / "echo.py"
LOOPBACK = "127.0.0.1"


_HANDED_OUT: set[int] = set()


def free_port(host: str = LOOPBACK) -> int:
    """A port that was free a moment ago and not handed out before in this process.

    The kernel may give the same ephemeral port to consecutive binds once the first
    socket is closed, so a test asking for three ports could get one twice. Prefer
    letting a server bind port 0 where it can report the port it got.
    """
    while True:
        with socket.socket() as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


@dataclass
class Backend:
    """A running echo backend process."""

    name: str
    port: int
    process: asyncio.subprocess.Process
    host: str = LOOPBACK
    output: deque[str] = field(default_factory=lambda: deque(maxlen=200))
    _readers: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    async def stop(self, grace: float = 5.0) -> int:
        """SIGTERM, wait up to ``grace`` seconds for a clean exit, then SIGKILL; the exit code."""
        proc = self.process
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), grace)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if proc.stdin is not None:
            proc.stdin.close()
        for task in self._readers:
            task.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)
        assert proc.returncode is not None
        return proc.returncode


async def _collect(stream: asyncio.StreamReader, into: deque[str]) -> None:
    while line := await stream.readline():
        into.append(line.decode(errors="replace").rstrip())


async def launch_backend(
    name: str,
    *,
    h2c: bool = False,
    grpc: bool = False,
    port: int = 0,
    grace: float = 5.0,
    ready_timeout: float = 20.0,
) -> Backend:
    """Start a backend and wait for its ``READY`` line; the caller must ``await b.stop()``.

    ``port=0`` lets the backend bind a free port itself, which no concurrent test can
    take between choosing and binding it.
    """
    argv = [str(ECHO), "--name", name, "--host", LOOPBACK, "--port", str(port)]
    argv += ["--grace", str(grace), "--stop-on-stdin-eof"]
    if h2c:
        argv.append("--h2c")
    if grpc:
        argv.append("--grpc")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    output: deque[str] = deque(maxlen=200)
    stderr = asyncio.create_task(_collect(proc.stderr, output))
    try:
        async with asyncio.timeout(ready_timeout):
            while line := (await proc.stdout.readline()).decode():
                if line.startswith("READY "):
                    bound = int(line.split()[1])
                    break
                output.append(line.rstrip())
            else:
                await proc.wait()
                await stderr
                log = "\n".join(output)
                raise RuntimeError(f"backend {name} exited {proc.returncode}:\n{log}")
    except BaseException:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        stderr.cancel()
        raise
    stdout = asyncio.create_task(_collect(proc.stdout, output))
    return Backend(name, bound, proc, output=output, _readers=[stdout, stderr])


@contextlib.asynccontextmanager
async def start_backend(
    name: str, *, h2c: bool = False, grpc: bool = False, port: int = 0
) -> AsyncIterator[Backend]:
    """A backend for the duration of the block (``--h2c`` or ``--grpc`` mode if asked)."""
    backend = await launch_backend(name, h2c=h2c, grpc=grpc, port=port)
    try:
        yield backend
    finally:
        await backend.stop()


@contextlib.asynccontextmanager
async def start_backends(
    *names: str, h2c: bool = False, grpc: bool = False
) -> AsyncIterator[list[Backend]]:
    """Several backends started concurrently, in the order of ``names``."""
    results = await asyncio.gather(
        *(launch_backend(n, h2c=h2c, grpc=grpc) for n in names), return_exceptions=True
    )
    backends = [r for r in results if isinstance(r, Backend)]
    try:
        for result in results:
            if isinstance(result, BaseException):
                raise result
        yield backends
    finally:
        await asyncio.gather(*(b.stop() for b in backends))


def _decode(body: bytes, content_type: str) -> Any:
    if body and content_type.startswith("application/json"):
        return json.loads(body)
    return body.decode("utf-8", "replace")


async def get(
    url: str,
    host: str | None = None,
    headers: Mapping[str, str] | None = None,
    *,
    method: str = "GET",
    data: bytes | None = None,
    timeout_s: float = 10.0,
    session: aiohttp.ClientSession | None = None,
) -> tuple[int, Any, CIMultiDict[str]]:
    """One HTTP/1.1 request with the Host header set to ``host``; redirects not followed.

    Returns ``(status, body, headers)`` with the body parsed when it is JSON, else text.
    """
    sent = dict(headers or {})
    if host is not None:
        sent["Host"] = host
    own = session is None
    client = session or aiohttp.ClientSession()
    try:
        async with client.request(
            method,
            url,
            headers=sent,
            data=data,
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        ) as resp:
            body = await resp.read()
            return resp.status, _decode(body, resp.content_type), CIMultiDict(resp.headers)
    finally:
        if own:
            await client.close()


async def ws_roundtrip(
    url: str, host: str | None, messages: Iterable[str], *, timeout_s: float = 10.0
) -> list[str]:
    """Send each text message over one websocket and return the replies, in order."""
    headers = {"Host": host} if host is not None else {}
    replies: list[str] = []
    async with asyncio.timeout(timeout_s), aiohttp.ClientSession() as session:
        async with session.ws_connect(url, headers=headers) as ws:
            for message in messages:
                await ws.send_str(message)
                replies.append(await ws.receive_str())
    return replies


class _GoawayFilter:
    """Takes GOAWAY frames out of the bytes fed to h2, which would otherwise close its
    state machine at once and fail the streams a graceful GOAWAY lets finish."""

    def __init__(self) -> None:
        self.buffer = b""
        self.goaway: tuple[int, int] | None = None  # (last_stream_id, error_code)

    def feed(self, data: bytes) -> bytes:
        if not self.buffer and data.startswith(b"HTTP/"):
            raise ConnectionError(f"server answered HTTP/1: {data.splitlines()[0]!r}")
        self.buffer += data
        out = bytearray()
        while len(self.buffer) >= 9:
            end = 9 + int.from_bytes(self.buffer[:3], "big")
            if len(self.buffer) < end:
                break
            frame, self.buffer = self.buffer[:end], self.buffer[end:]
            if frame[3] == 0x7:
                last = int.from_bytes(frame[9:13], "big") & 0x7FFFFFFF
                self.goaway = (last, int.from_bytes(frame[13:17], "big"))
            else:
                out += frame
        return bytes(out)


async def h2c_get(
    url: str,
    host: str | None = None,
    headers: Mapping[str, str] | None = None,
    *,
    method: str = "GET",
    data: bytes = b"",
    timeout_s: float = 10.0,
) -> tuple[int, Any, dict[str, str]]:
    """One HTTP/2 request over cleartext with prior knowledge; ``host`` becomes ``:authority``.

    Returns ``(status, body, headers)`` like ``get``. Raises ``ConnectionError`` if the
    server does not speak HTTP/2, or closes or resets the stream before the response ends.
    """
    parts = urlsplit(url)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
    )
    async with asyncio.timeout(timeout_s):
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port or 80)
        try:
            conn.initiate_connection()
            sid = conn.get_next_available_stream_id()
            request = [
                (":method", method),
                (":scheme", "http"),
                (":authority", host or parts.netloc),
                (":path", target),
            ]
            request += [(k.lower(), v) for k, v in (headers or {}).items()]
            conn.send_headers(sid, request, end_stream=not data)
            pending = memoryview(data)
            status = 0
            got: dict[str, str] = {}
            body = bytearray()
            ended = False
            frames = _GoawayFilter()
            while not ended:
                while pending:
                    size = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
                    if size <= 0:
                        break
                    chunk, pending = pending[:size], pending[size:]
                    conn.send_data(sid, chunk.tobytes(), end_stream=not pending)
                writer.write(conn.data_to_send())
                await writer.drain()
                raw = await reader.read(65536)
                if not raw:
                    raise ConnectionError("connection closed before the response ended")
                for event in conn.receive_data(frames.feed(raw)):
                    if isinstance(event, h2.events.ResponseReceived):
                        for k, v in event.headers:
                            if k == ":status":
                                status = int(v)
                            else:
                                got[str(k)] = str(v)
                    elif isinstance(event, h2.events.DataReceived):
                        body += event.data
                        conn.acknowledge_received_data(event.flow_controlled_length, sid)
                    elif isinstance(event, h2.events.StreamEnded):
                        ended = True
                    elif isinstance(event, h2.events.StreamReset):
                        raise ConnectionError(f"stream reset: {event.error_code!r}")
                if frames.goaway is not None:
                    last, code = frames.goaway
                    if code or last < sid:
                        raise ConnectionError(f"GOAWAY last_stream_id={last} error={code}")
            conn.close_connection()
            writer.write(conn.data_to_send())
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
    return status, _decode(bytes(body), got.get("content-type", "")), got


def _channel(address: str, authority: str | None) -> grpc.aio.Channel:
    options: list[tuple[str, Any]] = [("grpc.enable_http_proxy", 0)]
    if authority is not None:
        options.append(("grpc.default_authority", authority))
    return grpc.aio.insecure_channel(address, options=options)


async def grpc_ping(
    address: str, msg: str, *, authority: str | None = None, timeout_s: float = 10.0
) -> str:
    """Unary ``Ping`` to ``address`` (host:port) with ``:authority`` set to ``authority``."""
    async with _channel(address, authority) as channel:
        stub = ping_pb2_grpc.PingServiceStub(channel)
        reply = await stub.Ping(ping_pb2.PingRequest(msg=msg), timeout=timeout_s)
        return str(reply.msg)


async def grpc_ping_stream(
    address: str, msgs: Iterable[str], *, authority: str | None = None, timeout_s: float = 10.0
) -> list[str]:
    """Bidirectional ``PingStream``: each message sent, then its reply read, in turn."""
    async with _channel(address, authority) as channel:
        stub = ping_pb2_grpc.PingServiceStub(channel)
        call = stub.PingStream(timeout=timeout_s)
        replies: list[str] = []
        for msg in msgs:
            await call.write(ping_pb2.PingRequest(msg=msg))
            reply = await call.read()
            if reply is grpc.aio.EOF:
                raise ConnectionError("stream ended early")
            replies.append(str(reply.msg))
        await call.done_writing()
        code = await call.code()
        if code != grpc.StatusCode.OK:
            raise ConnectionError(f"PingStream ended with {code}")
        return replies


@dataclass(frozen=True, slots=True)
class Attempt:
    """One request of a prober: when it was sent and answered (time.monotonic()), and
    whether the answer was as expected (`what` says what it was otherwise)."""

    sent: float
    answered: float
    ok: bool
    what: str = ""


@dataclass
class Probes:
    """What background probers saw: answers as expected, and everything else."""

    served: int = 0
    failures: list[str] = field(default_factory=list)
    attempts: list[Attempt] = field(default_factory=list)
    refused: list[float] = field(default_factory=list)
    """When connections were refused, with `retry_refused` (not counted as attempts)."""

    def summary(self) -> str:
        total = self.served + len(self.failures)
        return f"{len(self.failures)} of {total} failed: {self.failures[:5]}"


def _refused(exc: BaseException) -> bool:
    return isinstance(exc, aiohttp.ClientConnectorError) and isinstance(
        exc.os_error, ConnectionRefusedError
    )


@contextlib.asynccontextmanager
async def probing(
    url: str,
    host: str,
    expected: Callable[[int, Any], bool],
    *,
    workers: int = 4,
    retry_refused: bool = False,
) -> AsyncIterator[Probes]:
    """`workers` clients requesting `url` (Host `host`) back to back until the block
    ends; an answer `expected(status, body)` rejects, or a transport error, is a failure.
    With `retry_refused`, a refused connection (nothing was sent) is noted in
    `refused` and the request sent again 10 ms later, as a client would."""
    probes = Probes()
    stop = asyncio.Event()

    def note(sent: float, ok: bool, what: str = "") -> None:
        probes.attempts.append(Attempt(sent, time.monotonic(), ok, what))
        if ok:
            probes.served += 1
        else:
            probes.failures.append(what)

    async def prober(session: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            sent = time.monotonic()
            try:
                status, body, _ = await get(url, host=host, session=session)
            except Exception as exc:  # a dropped connection is a failed request too
                if retry_refused and _refused(exc):
                    probes.refused.append(time.monotonic())
                    await asyncio.sleep(0.01)
                else:
                    note(sent, False, repr(exc))
                continue
            if expected(status, body):
                note(sent, True)
            else:
                note(sent, False, f"{status} {body!r}"[:200])

    async with aiohttp.ClientSession() as session:
        tasks = [asyncio.create_task(prober(session)) for _ in range(workers)]
        try:
            yield probes
        finally:
            stop.set()
            await asyncio.gather(*tasks)
