"""Readiness probes against real loopback servers: TCP, HTTP, and the prober's state machine."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from wakegate.runtime.probes import ProbeTiming, ReadinessProber, http_probe, tcp_probe
from wakegate.serving.model import HTTPGetProbe, Probe, TCPSocketProbe

LOOPBACK = "127.0.0.1"
FAST = ProbeTiming(period_s=0.05, timeout_s=0.5, failure_threshold=2)


class StatusServer:
    """An HTTP server answering every request with `self.status`; records request heads."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.heads: list[str] = []
        self.silent = False
        self.raw: bytes | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            self.heads.append(head.decode("latin-1"))
            if self.silent:
                await asyncio.sleep(5)
            elif self.raw is not None:
                writer.write(self.raw)
            else:
                writer.write(f"HTTP/1.1 {self.status} X\r\nContent-Length: 0\r\n\r\n".encode())
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def serve(app: StatusServer, port: int = 0) -> AsyncIterator[int]:
    server = await asyncio.start_server(app.handle, LOOPBACK, port)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()


class Changes:
    """An `on_change` callback that records readiness flips and can wait for one."""

    def __init__(self) -> None:
        self.values: list[bool] = []
        self._event = asyncio.Event()

    def __call__(self, ready: bool) -> None:
        self.values.append(ready)
        self._event.set()

    async def until(self, ready: bool, timeout_s: float) -> None:
        async with asyncio.timeout(timeout_s):
            while not self.values or self.values[-1] != ready:
                self._event.clear()
                await self._event.wait()


async def closed_port() -> int:
    server = await asyncio.start_server(lambda r, w: None, LOOPBACK, 0)
    port = int(server.sockets[0].getsockname()[1])
    server.close()
    await server.wait_closed()
    return port


async def test_tcp_probe_open_and_closed_port() -> None:
    async with serve(StatusServer()) as port:
        assert (await tcp_probe(LOOPBACK, port, 1.0)).ok
    port = await closed_port()
    result = await tcp_probe(LOOPBACK, port, 1.0)
    assert not result.ok
    assert result.detail.startswith(f"TCP connect to {LOOPBACK}:{port}: ")


async def test_http_probe_status_codes_and_headers() -> None:
    app = StatusServer()
    async with serve(app) as port:
        for status, ok in ((200, True), (204, True), (302, True), (404, False), (503, False)):
            app.status = status
            result = await http_probe(LOOPBACK, port, "/healthz", timeout_s=1.0)
            assert (result.ok, result.detail) == (ok, f"HTTP GET /healthz returned {status}")
        await http_probe(LOOPBACK, port, "/p?q=1", (("X-Check", "yes"), ("host", "app.local")))
    head = app.heads[-1]
    assert head.startswith("GET /p?q=1 HTTP/1.1\r\n")
    assert "X-Check: yes\r\n" in head
    assert "host: app.local\r\n" in head and f"Host: {LOOPBACK}" not in head
    assert "User-Agent: kube-probe/" in head


async def test_http_probe_timeout_and_garbage() -> None:
    app = StatusServer()
    app.silent = True
    async with serve(app) as port:
        started = time.monotonic()
        result = await http_probe(LOOPBACK, port, "/", timeout_s=0.2)
        assert not result.ok and result.detail == "HTTP GET / timed out after 0.2s"
        assert time.monotonic() - started < 2.0
        app.silent, app.raw = False, b"SSH-2.0-OpenSSH\r\n"
        result = await http_probe(LOOPBACK, port, "/", timeout_s=1.0)
        assert not result.ok and "not an HTTP response (SSH-2.0-OpenSSH)" in result.detail
    result = await http_probe(LOOPBACK, await closed_port(), "/", timeout_s=1.0)
    assert not result.ok and result.detail.startswith("HTTP GET /: ")


async def test_startup_probes_aggressively_not_at_the_period() -> None:
    port = await closed_port()
    slow = ProbeTiming(period_s=5.0)
    prober = ReadinessProber(Probe(tcp_socket=TCPSocketProbe()), LOOPBACK, port, timing=slow)
    prober.start()
    try:
        await asyncio.sleep(0.2)
        assert not prober.ready and not prober.ready_event.is_set()
        async with serve(StatusServer(), port):
            await prober.wait_ready(2.0)  # far less than the 5 s period
    finally:
        await prober.stop()


async def test_failures_flip_readiness_and_recovery() -> None:
    app = StatusServer()
    changes = Changes()
    async with serve(app) as port:
        probe = Probe(http_get=HTTPGetProbe(path="/ready"))
        prober = ReadinessProber(probe, LOOPBACK, port, timing=FAST, on_change=changes)
        prober.start()
        try:
            await prober.wait_ready(2.0)
            app.status = 503
            await changes.until(False, 2.0)
            assert prober.last_result is not None
            assert prober.last_result.detail == "HTTP GET /ready returned 503"
            app.status = 200
            await prober.wait_ready(2.0)
            assert changes.values == [True, False, True]
        finally:
            await prober.stop()
    assert changes.values == [True, False, True, False]
    assert not prober.ready_event.is_set()


def test_container_settings_override_defaults() -> None:
    probe = Probe(http_get=HTTPGetProbe(), period_s=2, failure_threshold=5, timeout_s=3)
    prober = ReadinessProber(probe, LOOPBACK, 1, timing=FAST)
    assert (prober.period_s, prober.timeout_s, prober.failure_threshold) == (2.0, 3.0, 5)
    default = ReadinessProber(Probe(tcp_socket=TCPSocketProbe()), LOOPBACK, 1, timing=FAST)
    assert (default.period_s, default.timeout_s, default.failure_threshold) == (0.05, 0.5, 2)


async def test_failures_below_the_threshold_keep_ready() -> None:
    app = StatusServer()
    changes: list[bool] = []
    timing = ProbeTiming(period_s=0.1, failure_threshold=10)
    async with serve(app) as port:
        prober = ReadinessProber(
            Probe(http_get=HTTPGetProbe()), LOOPBACK, port, timing=timing, on_change=changes.append
        )
        prober.start()
        await prober.wait_ready(2.0)
        app.status = 500
        await asyncio.sleep(0.12)  # one or two failed probes
        app.status = 200
        await asyncio.sleep(0.3)
        await prober.stop()
    assert changes == [True, False]


async def test_initial_delay_and_success_threshold() -> None:
    app = StatusServer()
    async with serve(app) as port:
        probe = Probe(tcp_socket=TCPSocketProbe(), initial_delay_s=1, success_threshold=3)
        prober = ReadinessProber(probe, LOOPBACK, port, timing=FAST)
        started = time.monotonic()
        prober.start()
        await prober.wait_ready(5.0)
        assert time.monotonic() - started >= 1.0
        assert prober.ready_at is not None
        await prober.stop()
