"""The activator as a real process between a real gRPC control plane and real backends."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import grpc

from tests.support.backends import Backend, launch_backend
from tests.support.waiting import eventually
from wakegate.autoscaler.service import ActivatorStat, AutoscalerService

LOOPBACK = "127.0.0.1"
NS = "default"
HOST = "hello.default.example.com"


@dataclass
class Stack:
    """A control plane (AutoscalerService on a grpc.aio server) and an activator process."""

    service: AutoscalerService
    server: grpc.aio.Server
    control_plane_port: int
    process: asyncio.subprocess.Process
    port: int
    session: aiohttp.ClientSession
    pokes: list[tuple[float, str, str]] = field(default_factory=list)
    stats: list[tuple[float, str, ActivatorStat]] = field(default_factory=list)
    poked: asyncio.Event = field(default_factory=asyncio.Event)
    output: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    async def request(
        self,
        revision: str | None,
        path: str = "/",
        *,
        method: str = "GET",
        data: Any = None,
        headers: dict[str, str] | None = None,
        timeout_s: float = 15.0,
    ) -> tuple[int, bytes, dict[str, str]]:
        sent = {"Host": HOST, **(headers or {})}
        if revision is not None:
            sent["Knative-Serving-Namespace"] = NS
            sent["Knative-Serving-Revision"] = revision
        async with self.session.request(
            method,
            self.url + path,
            headers=sent,
            data=data,
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        ) as resp:
            return resp.status, await resp.read(), dict(resp.headers)

    async def metric(self, name: str, revision: str | None = None) -> float:
        status, body, _ = await self.request(None, "/metrics")
        assert status == 200
        labels = f'{{namespace="{NS}",revision="{revision}"}}' if revision else ""
        prefix = f"{name}{labels} "
        for line in body.decode().splitlines():
            if line.startswith(prefix):
                return float(line[len(prefix) :])
        return 0.0


def endpoints(*backends: Backend) -> list[tuple[str, int]]:
    return [(b.host, b.port) for b in backends]


async def _start_server(service: AutoscalerService, port: int = 0) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    service.add_to_server(server)
    bound = server.add_insecure_port(f"{LOOPBACK}:{port}")
    await server.start()
    return server, bound


@contextlib.asynccontextmanager
async def activator(*args: str) -> AsyncIterator[Stack]:
    """The activator started with `args`, connected to a fresh control plane."""
    loop = asyncio.get_running_loop()
    service = AutoscalerService()
    server, cp_port = await _start_server(service)
    argv = ["-m", "wakegate.activator.main", "--listen", f"{LOOPBACK}:0"]
    argv += ["--control-plane", f"{LOOPBACK}:{cp_port}", "--stop-on-stdin-eof", *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
    )
    assert process.stdout is not None
    output: list[str] = []
    reader: asyncio.Task[None] | None = None
    stack: Stack | None = None
    session = aiohttp.ClientSession()
    try:
        async with asyncio.timeout(20):
            while True:
                line = (await process.stdout.readline()).decode()
                if not line:
                    raise RuntimeError("activator exited:\n" + "\n".join(output))
                if line.startswith("READY "):
                    port = int(line.split()[1])
                    break
                output.append(line.rstrip())

        async def drain() -> None:
            assert process.stdout is not None
            while line := await process.stdout.readline():
                output.append(line.decode().rstrip())

        reader = asyncio.create_task(drain())
        stack = ready = Stack(service, server, cp_port, process, port, session, output=output)

        def on_poke(namespace: str, revision: str) -> None:
            ready.pokes.append((loop.time(), namespace, revision))
            ready.poked.set()

        def on_stats(sender: str, stat: ActivatorStat) -> None:
            ready.stats.append((loop.time(), sender, stat))

        service.on_poke = on_poke
        service.on_stats = on_stats

        async def connected() -> bool:
            return service.watchers == 1 and len(service.senders) == 1

        await eventually(connected)
        yield stack
    except BaseException:
        print("\n".join(output), file=sys.stderr)
        raise
    finally:
        await session.close()
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()
        if reader is not None:
            await reader
        await (stack.server if stack is not None else server).stop(None)


@contextlib.asynccontextmanager
async def backends(*names: str) -> AsyncIterator[list[Backend]]:
    started = await asyncio.gather(*(launch_backend(n, grace=1.0) for n in names))
    try:
        yield list(started)
    finally:
        await asyncio.gather(*(b.stop() for b in started))


async def test_held_request_pokes_at_once_and_completes_when_a_pod_is_ready() -> None:
    # A long stats interval: the poke must not wait for the next report.
    async with activator("--stats-interval", "30") as stack, backends("blue") as (blue,):
        loop = asyncio.get_running_loop()
        sent = loop.time()
        held = asyncio.create_task(stack.request("hello-00001", "/some/path?x=1"))
        await asyncio.wait_for(stack.poked.wait(), 2.0)
        assert stack.pokes[0][1:] == (NS, "hello-00001")
        assert stack.pokes[0][0] - sent < 1.0
        await asyncio.sleep(0.2)
        assert not held.done()
        assert await stack.metric("wakegate_activator_queued_requests", "hello-00001") == 1

        stack.service.set_endpoints(NS, "hello-00001", endpoints(blue), 0)
        status, body, headers = await asyncio.wait_for(held, 5.0)
        assert status == 200, body
        echoed = json.loads(body)
        assert echoed["name"] == "blue"
        assert echoed["path"] == "/some/path"
        assert echoed["query"] == "x=1"
        assert echoed["host"] == HOST
        assert echoed["headers"]["x-forwarded-for"] == LOOPBACK
        assert echoed["headers"]["knative-serving-revision"] == "hello-00001"
        assert headers["X-Backend-Name"] == "blue"
        assert len(stack.pokes) == 1


async def test_fifty_held_requests_all_complete_once_endpoints_appear() -> None:
    async with activator() as stack, backends("blue") as (blue,):
        held = [asyncio.create_task(stack.request("hello-00001", f"/?i={i}")) for i in range(50)]

        async def all_held() -> bool:
            return await stack.metric("wakegate_activator_queued_requests", "hello-00001") == 50

        await eventually(all_held)
        assert len(stack.pokes) == 1
        stack.service.set_endpoints(NS, "hello-00001", endpoints(blue))
        results = await asyncio.wait_for(asyncio.gather(*held), 10.0)
        assert [r[0] for r in results] == [200] * 50
        assert sorted(json.loads(r[1])["query"] for r in results) == sorted(
            f"i={i}" for i in range(50)
        )


async def test_full_queue_answers_503_and_held_requests_still_complete() -> None:
    async with activator("--max-queued", "3") as stack, backends("blue") as (blue,):
        held = [asyncio.create_task(stack.request("hello-00001")) for _ in range(3)]

        async def three_held() -> bool:
            return await stack.metric("wakegate_activator_queued_requests", "hello-00001") == 3

        await eventually(three_held)
        status, body, _ = await stack.request("hello-00001")
        assert status == 503
        assert body.decode().strip() == "activator queue full for default/hello-00001"

        # A client that gives up frees its place in the queue.
        held[0].cancel()

        async def two_held() -> bool:
            return await stack.metric("wakegate_activator_queued_requests", "hello-00001") == 2

        await eventually(two_held)
        held[0] = asyncio.create_task(stack.request("hello-00001"))
        await eventually(three_held)

        stack.service.set_endpoints(NS, "hello-00001", endpoints(blue))
        assert [r[0] for r in await asyncio.gather(*held)] == [200, 200, 200]


async def test_hold_timeout_answers_504() -> None:
    async with activator("--hold-timeout", "0.4") as stack:
        started = time.monotonic()
        status, body, _ = await stack.request("hello-00001")
        waited = time.monotonic() - started
        assert status == 504
        assert body.decode().strip() == "no ready pod for default/hello-00001 within 0.4s"
        assert 0.35 <= waited < 3.0

        # A revision's own hold timeout, from the control plane, wins.
        stack.service.set_endpoints(NS, "hello-00002", [], hold_timeout_s=0.2)
        # A deleted revision has no pods any more.
        stack.service.set_endpoints(NS, "hello-00003", [(LOOPBACK, 9)])

        async def announced() -> bool:
            return await stack.metric("wakegate_activator_ready_pods", "hello-00003") == 1

        await eventually(announced)
        assert 'revision="hello-00002"' in (await stack.request(None, "/metrics"))[1].decode()
        stack.service.delete_revision(NS, "hello-00003")

        async def deleted() -> bool:
            return await stack.metric("wakegate_activator_ready_pods", "hello-00003") == 0

        await eventually(deleted)
        status, body, _ = await stack.request("hello-00002")
        assert status == 504
        assert body.decode().strip() == "no ready pod for default/hello-00002 within 0.2s"
        status, body, _ = await stack.request("hello-00003")
        assert status == 504
        assert body.decode().strip() == "no ready pod for default/hello-00003 within 0.4s"


async def test_container_concurrency_one_never_sends_a_pod_two_requests() -> None:
    async with activator() as stack, backends("blue", "green") as pods:
        stack.service.set_endpoints(NS, "hello-00001", endpoints(*pods), container_concurrency=1)
        loop = asyncio.get_running_loop()
        done: dict[str, list[float]] = {"blue": [], "green": []}

        async def one() -> None:
            status, body, headers = await stack.request("hello-00001", "/?sleep=250")
            assert status == 200, body
            done[headers["X-Backend-Name"]].append(loop.time())

        started = loop.time()
        await asyncio.gather(*(one() for _ in range(6)))
        elapsed = loop.time() - started
        # Two pods taking one request at a time: three rounds of 250 ms.
        assert elapsed >= 0.7
        assert sorted(len(v) for v in done.values()) == [3, 3]
        for finished in done.values():
            finished.sort()
            gaps = [b - a for a, b in itertools.pairwise(finished)]
            assert min(gaps) >= 0.2, f"two requests overlapped on one pod: {finished}"


async def test_requests_survive_a_pod_that_died_without_notice() -> None:
    async with activator() as stack, backends("blue", "green") as (blue, green):
        stack.service.set_endpoints(NS, "hello-00001", endpoints(blue, green))
        # Warm pooled connections to both pods.
        seen = {(await stack.request("hello-00001"))[2]["X-Backend-Name"] for _ in range(6)}
        assert seen == {"blue", "green"}

        await blue.stop()
        for i in range(10):
            status, body, headers = await stack.request(
                "hello-00001", method="POST", data=f"payload {i}".encode()
            )
            assert status == 200, body
            assert headers["X-Backend-Name"] == "green"
            assert json.loads(body)["body"] == f"payload {i}"
        statuses = await asyncio.gather(*(stack.request("hello-00001") for _ in range(20)))
        assert [s[0] for s in statuses] == [200] * 20
        assert await stack.metric("wakegate_activator_retries_total") >= 1


async def test_reported_average_concurrency_matches_closed_loop_clients() -> None:
    clients = 6
    async with activator("--stats-interval", "0.5") as stack, backends("blue") as (blue,):
        stack.service.set_endpoints(NS, "hello-00001", endpoints(blue))
        loop = asyncio.get_running_loop()
        stop_at = loop.time() + 3.0

        async def client() -> None:
            while loop.time() < stop_at:
                status, _, _ = await stack.request("hello-00001", "/?sleep=100")
                assert status == 200

        started = loop.time()
        await asyncio.gather(*(client() for _ in range(clients)))
        ended = loop.time()

        async def idle_reported() -> bool:
            mine = [s for t, _, s in stack.stats if s.revision == "hello-00001" and t > ended]
            return bool(mine) and mine[-1].average_concurrency == 0

        # Once idle, the revision reports zero (and keeps reporting).
        await eventually(idle_reported, 5.0)
        senders = {sender for _, sender, _ in stack.stats}
        assert len(senders) == 1
        # Reports whose interval lies wholly inside the load.
        inside = [
            s
            for t, _, s in stack.stats
            if s.revision == "hello-00001" and t - s.interval_s >= started + 0.3 and t <= ended
        ]
        assert len(inside) >= 3, stack.stats
        average = sum(s.average_concurrency * s.interval_s for s in inside) / sum(
            s.interval_s for s in inside
        )
        assert clients * 0.9 <= average <= clients * 1.1, [s.average_concurrency for s in inside]
        assert all(s.queued == 0 for s in inside)
        assert sum(s.request_count for s in inside) > 0


async def test_requests_without_knative_headers() -> None:
    async with activator() as stack:
        status, body, _ = await stack.request(None, "/anything")
        assert status == 400
        assert "Knative-Serving-Namespace" in body.decode()
        assert "Knative-Serving-Revision" in body.decode()
        status, body, _ = await stack.request(None, "/healthz")
        assert (status, body) == (200, b"ok\n")
        status, body, headers = await stack.request(None, "/metrics")
        assert status == 200
        assert headers["Content-Type"].startswith("text/plain")
        assert b"wakegate_activator_control_plane_connected 1.0" in body


async def test_large_and_streamed_bodies_pass_through() -> None:
    async with activator() as stack, backends("blue") as (blue,):
        stack.service.set_endpoints(NS, "hello-00001", endpoints(blue))
        # Past the activator's buffering limit, within the echo backend's 1 MiB.
        big = bytes(range(97, 123)) * (900 * 1024 // 26)
        status, body, _ = await stack.request("hello-00001", "/", method="POST", data=big)
        assert status == 200
        echoed = json.loads(body)
        assert echoed["body_length"] == len(big)
        assert echoed["body"].encode() == big
        assert echoed["headers"]["content-length"] == str(len(big))
        assert "transfer-encoding" not in echoed["headers"]

        async def chunks() -> AsyncIterator[bytes]:
            for i in range(5):
                await asyncio.sleep(0.02)
                yield f"part {i};".encode() * 1000

        status, body, _ = await stack.request("hello-00001", "/", method="POST", data=chunks())
        assert status == 200
        echoed = json.loads(body)
        assert echoed["body"] == "".join(f"part {i};" * 1000 for i in range(5))
        assert echoed["headers"]["transfer-encoding"] == "chunked"

        # The response streams: the first line arrives long before the last.
        loop = asyncio.get_running_loop()
        headers = {
            "Host": HOST,
            "Knative-Serving-Namespace": NS,
            "Knative-Serving-Revision": "hello-00001",
        }
        async with stack.session.get(
            stack.url + "/stream?chunks=4&interval=300", headers=headers
        ) as resp:
            assert resp.status == 200
            started = loop.time()
            first = await resp.content.readline()
            first_at = loop.time() - started
            rest = await resp.read()
            total = loop.time() - started
        assert first == b"blue 0\n"
        assert rest == b"blue 1\nblue 2\nblue 3\n"
        assert first_at < 0.25 < total


async def test_websocket_passes_through() -> None:
    async with activator() as stack, backends("blue") as (blue,):
        stack.service.set_endpoints(NS, "hello-00001", endpoints(blue))
        headers = {
            "Host": HOST,
            "Knative-Serving-Namespace": NS,
            "Knative-Serving-Revision": "hello-00001",
        }
        async with stack.session.ws_connect(stack.url + "/ws", headers=headers) as ws:
            for message in ("one", "two"):
                await ws.send_str(message)
                assert await asyncio.wait_for(ws.receive_str(), 5) == f"blue:{message}"


async def test_keeps_serving_while_the_control_plane_restarts() -> None:
    async with activator() as stack, backends("blue", "green") as (blue, green):
        stack.service.set_endpoints(NS, "hello-00001", endpoints(blue))
        assert (await stack.request("hello-00001"))[0] == 200

        await stack.server.stop(None)
        status, _, headers = await stack.request("hello-00001")
        assert (status, headers["X-Backend-Name"]) == (200, "blue")

        # A new control plane on the same port, which knows only green.
        service = AutoscalerService()
        service.set_endpoints(NS, "hello-00001", endpoints(green))
        stack.server, _ = await _start_server(service, stack.control_plane_port)

        async def reconnected() -> bool:
            return service.watchers == 1 and len(service.senders) == 1

        await eventually(reconnected)
        for _ in range(3):
            status, _, headers = await stack.request("hello-00001")
            assert (status, headers["X-Backend-Name"]) == (200, "green")


async def _exchange(
    port: int, data: bytes, responses: int, *, head: bool = False
) -> list[tuple[int, dict[str, str], bytes]]:
    """Send `data` on one connection and read `responses` HTTP/1.1 responses back (with
    `head`, answers to HEAD: no body)."""
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    try:
        writer.write(data)
        await writer.drain()
        out = []
        for _ in range(responses):
            text = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            status_line, *lines = text.split("\r\n")
            headers = {}
            for line in lines:
                if line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            if head:
                body = b""
            elif "content-length" in headers:
                body = await reader.readexactly(int(headers["content-length"]))
            else:
                body = b""
                while (size := int((await reader.readuntil(b"\r\n")).strip(), 16)) > 0:
                    body += await reader.readexactly(size)
                    await reader.readexactly(2)
                await reader.readexactly(2)
            out.append((int(status_line.split()[1]), headers, body))
        return out
    finally:
        writer.close()


def _raw(method: str, path: str, *extra: str, body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}", f"Knative-Serving-Namespace: {NS}"]
    lines += ["Knative-Serving-Revision: hello-00001", *extra]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def test_one_connection_mixes_plain_and_handed_over_requests() -> None:
    """Plain requests (a small body or none) take the lean path, the others (HEAD, a
    chunked body) aiohttp's server, on the same connection, answered in order with the
    same headers; a request pipelined behind another that is not plain is refused."""
    async with activator() as stack, backends("blue") as (blue,):
        stack.service.set_endpoints(NS, "hello-00001", endpoints(blue))
        chunked = (
            _raw("POST", "/chunked", "Transfer-Encoding: chunked").removesuffix(b"\r\n\r\n")
            + b"\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        )
        answers = await _exchange(
            stack.port,
            _raw(
                "GET",
                "/one",
                "Connection: keep-alive, X-Hop",
                "X-Hop: 1",
                "X-Forwarded-For: 10.0.0.9",
            )
            + _raw("POST", "/two", body=b"abc"),
            2,
        )
        pipelined = await _exchange(stack.port, _raw("GET", "/three") + _raw("HEAD", "/four"), 2)
        assert pipelined[1][0] == 400 and b"pipelined" in pipelined[1][2], pipelined
        answers += [pipelined[0], *await _exchange(stack.port, chunked, 1)]
        statuses = [a[0] for a in answers]
        assert statuses == [200, 200, 200, 200], answers
        one, two, three, posted = (json.loads(a[2]) for a in answers)
        assert one["path"] == "/one" and "x-hop" not in one["headers"]
        assert one["headers"]["x-forwarded-for"] == f"10.0.0.9, {LOOPBACK}"
        assert (two["method"], two["body"]) == ("POST", "abc")
        assert three["path"] == "/three"
        assert (posted["method"], posted["body"]) == ("POST", "hello")
        # The HEAD after a lean request on the same connection: aiohttp answers it.
        [(status, headers, body)] = await _exchange(stack.port, _raw("HEAD", "/five"), 1, head=True)
        assert (status, body, headers["x-backend-name"]) == (200, b"", "blue")


async def test_a_request_in_a_read_of_its_own_is_forwarded_as_sent() -> None:
    """A request that came in one read, with no hop-by-hop header, goes to the pod with
    its head as the client wrote it (names' case, repeated headers in order), its one
    X-Forwarded-For moved to the end with the client's address added; the pod's answer
    comes back whole."""
    async with activator() as stack, backends("blue") as (blue,):
        stack.service.set_endpoints(NS, "hello-00001", endpoints(blue))
        sent = _raw("POST", "/as-sent?q=1", "X-Custom: a", "x-FORWARDED-for:  10.0.0.7 ")
        sent = sent.removesuffix(b"\r\n\r\n") + b"\r\nX-CUSTOM: b\r\nContent-Length: 3\r\n\r\nxyz"
        [(status, headers, body)] = await _exchange(stack.port, sent, 1)
        assert (status, headers["x-backend-name"]) == (200, "blue"), body
        assert int(headers["content-length"]) == len(body)
        echoed = json.loads(body)
        assert (echoed["method"], echoed["path"], echoed["query"]) == ("POST", "/as-sent", "q=1")
        assert echoed["body"] == "xyz"
        assert echoed["headers"]["x-custom"] == "a, b"
        assert echoed["headers"]["x-forwarded-for"] == f"10.0.0.7, {LOOPBACK}"
        [(status, _, body)] = await _exchange(stack.port, _raw("GET", "/no-forwarded-for"), 1)
        assert status == 200
        assert json.loads(body)["headers"]["x-forwarded-for"] == LOOPBACK


async def test_a_request_on_a_kept_pod_connection_given_up_or_answered_in_http_1_0() -> None:
    """On a kept connection to the pod: an HTTP/1.0 answer reaches the client as
    HTTP/1.1, whole; a request the client gives up before the pod answered closes that
    connection and gives its pod slot back (containerConcurrency 1: the next request
    is answered)."""
    hung_up = asyncio.Event()

    async def pod(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while b"GET /hang " not in (await reader.readuntil(b"\r\n\r\n")):
                writer.write(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n")
                writer.write(b"X-Pod: raw\r\nContent-Length: 2\r\n\r\nhi")
            if await reader.read() == b"":  # never answers; waits for the peer to close
                hung_up.set()
        writer.close()

    server = await asyncio.start_server(pod, LOOPBACK, 0)
    pod_port = server.sockets[0].getsockname()[1]

    async def head_and_body(port: int, path: str) -> bytes:
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
        try:
            writer.write(_raw("GET", path))
            return await reader.readuntil(b"\r\n\r\n") + await reader.readexactly(2)
        finally:
            writer.close()

    try:
        async with activator() as stack:
            stack.service.set_endpoints(NS, "hello-00001", [(LOOPBACK, pod_port)], 1)
            for path in ("/first", "/kept"):
                answer = await asyncio.wait_for(head_and_body(stack.port, path), 5)
                assert answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer
                assert b"\r\nX-Pod: raw\r\n" in answer and answer.endswith(b"\r\n\r\nhi")
            _, writer = await asyncio.open_connection(LOOPBACK, stack.port)
            writer.write(_raw("GET", "/hang"))
            await writer.drain()
            await asyncio.sleep(0.2)
            writer.close()
            await asyncio.wait_for(hung_up.wait(), 5)
            answer = await asyncio.wait_for(head_and_body(stack.port, "/after"), 5)
            assert answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer
    finally:
        server.close()


async def test_pod_connections_are_reused_and_a_closed_one_is_replaced() -> None:
    """The activator keeps its connections to a pod between requests; a pod that
    closed a kept connection meanwhile still gets the next request."""
    from wakegate.activator.upstream import UpstreamPool

    accepted = 0

    async def pod(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
                if accepted == 1:
                    break  # the first connection: closed after one answer, unannounced
        writer.close()

    server = await asyncio.start_server(pod, LOOPBACK, 0)
    port = server.sockets[0].getsockname()[1]
    pool = UpstreamPool(connect_timeout_s=2)
    try:
        for _ in range(4):
            response = await pool.request(LOOPBACK, port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"")
            assert (response.status, response.body_now()) == (200, b"ok")
            response.release()
            await asyncio.sleep(0.05)
        assert accepted == 2  # one replaced, then the second kept for three requests
    finally:
        pool.close()
        server.close()


async def test_sigterm_lets_requests_in_progress_finish() -> None:
    """On SIGTERM the activator stops accepting and closes idle connections, and the
    requests it is forwarding (on its lean path and on aiohttp's) are answered."""
    async with activator() as stack, backends("blue") as (blue,):
        stack.service.set_endpoints(NS, "hello-00001", endpoints(blue))
        idle_reader, idle = await asyncio.open_connection(LOOPBACK, stack.port)
        slow = asyncio.create_task(stack.request("hello-00001", "/sleep/700"))
        slow_head = asyncio.create_task(
            _exchange(stack.port, _raw("HEAD", "/sleep/700"), 1, head=True)
        )
        await asyncio.sleep(0.3)
        stack.process.send_signal(signal.SIGTERM)
        status, body, _ = await slow
        assert status == 200 and json.loads(body)["path"] == "/sleep/700"
        [(status, _, _)] = await slow_head
        assert status == 200
        assert await asyncio.wait_for(idle_reader.read(), 5) == b""  # closed, unanswered
        assert await asyncio.wait_for(stack.process.wait(), 10) == 0
        idle.close()


async def test_a_request_given_up_closes_its_pod_connection() -> None:
    """A request cancelled while its pod has not answered yet (the client went away)
    does not leave the connection to the pod open for an answer nobody reads."""
    from wakegate.activator.upstream import UpstreamPool

    closed = asyncio.Event()

    async def slow_pod(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        if await reader.read() == b"":  # never answers; waits for the peer to close
            closed.set()
        writer.close()

    server = await asyncio.start_server(slow_pod, LOOPBACK, 0)
    port = server.sockets[0].getsockname()[1]
    pool = UpstreamPool(connect_timeout_s=2)
    try:
        head = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
        request = asyncio.create_task(pool.request(LOOPBACK, port, head, b""))
        await asyncio.sleep(0.1)
        request.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await request
        await asyncio.wait_for(closed.wait(), 2)
    finally:
        pool.close()
        server.close()
