"""The echo backend, run as real processes and spoken to directly (no gateway)."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from tests.support.backends import (
    get,
    grpc_ping,
    grpc_ping_stream,
    h2c_get,
    launch_backend,
    start_backend,
    start_backends,
    ws_roundtrip,
)


async def test_json_describes_the_request_as_received() -> None:
    async with start_backend("alpha") as b:
        status, body, headers = await get(
            f"{b.url}/some/path?x=1&y=two",
            host="alpha.default.example.com",
            headers={"Foo-Bar": "baz"},
            method="POST",
            data=b"hello",
        )
    assert status == 200
    assert headers["X-Backend-Name"] == "alpha"
    assert body["name"] == "alpha"
    assert body["method"] == "POST"
    assert body["path"] == "/some/path"
    assert body["query"] == "x=1&y=two"
    assert body["args"] == {"x": "1", "y": "two"}
    assert body["host"] == "alpha.default.example.com"
    assert body["headers"]["foo-bar"] == "baz"
    assert body["proto"] == "HTTP/1.1"
    assert body["body_length"] == 5
    assert body["body"] == "hello"


async def test_repeated_headers_are_joined_so_appends_show() -> None:
    async with start_backend("alpha") as b, aiohttp.ClientSession() as session:
        async with session.get(b.url, headers=[("Foo", "one"), ("Foo", "two")]) as resp:
            body = await resp.json()
    assert body["headers"]["foo"] == "one, two"


async def test_sleep_status_and_retry() -> None:
    async with start_backend("alpha") as b:
        started = time.monotonic()
        status, body, _ = await get(f"{b.url}/?sleep=300")
        assert status == 200 and time.monotonic() - started >= 0.3
        started = time.monotonic()
        status, body, _ = await get(f"{b.url}/sleep/200")
        assert status == 200 and time.monotonic() - started >= 0.2
        with pytest.raises(asyncio.TimeoutError):
            await get(f"{b.url}/?sleep=2000", timeout_s=0.3)

        status, body, _ = await get(f"{b.url}/status/418")
        assert status == 418 and body["name"] == "alpha"
        assert (await get(f"{b.url}/status/204"))[0] == 204

        codes = [(await get(f"{b.url}/retry?key=k1&fail=2"))[0] for _ in range(4)]
        assert codes == [503, 503, 200, 200]
        status, body, _ = await get(f"{b.url}/retry?key=k2&fail=1&code=502")
        assert status == 502 and body["attempt"] == 1
        status, body, _ = await get(f"{b.url}/retry?key=k2&fail=1&code=502")
        assert status == 200 and body["attempt"] == 2


async def test_stream_is_chunked() -> None:
    async with start_backend("alpha") as b:
        status, body, headers = await get(f"{b.url}/stream?chunks=3&interval=10")
    assert status == 200
    assert headers["Transfer-Encoding"] == "chunked"
    assert body == "alpha 0\nalpha 1\nalpha 2\n"


async def test_websocket_echo_names_the_backend() -> None:
    async with start_backend("alpha") as b:
        replies = await ws_roundtrip(f"ws://{b.address}/ws", "alpha.example.com", ["a", "b"])
    assert replies == ["alpha:a", "alpha:b"]


async def test_h2c_serves_http2_and_http1_on_one_port() -> None:
    async with start_backend("beta", h2c=True) as b:
        status, body, headers = await h2c_get(f"{b.url}/p?q=1", host="beta.example.com")
        assert status == 200
        assert headers["x-backend-name"] == "beta"
        assert body["proto"] == "HTTP/2.0"
        assert body["host"] == "beta.example.com"
        assert (body["path"], body["query"]) == ("/p", "q=1")

        # Larger than the default flow-control windows, in both directions.
        payload = b"x" * 200_000
        status, body, _ = await h2c_get(f"{b.url}/", method="POST", data=payload)
        assert status == 200 and body["body_length"] == len(payload)

        status, body, _ = await h2c_get(f"{b.url}/stream?chunks=2&interval=10")
        assert body == "beta 0\nbeta 1\n"

        status, body, _ = await get(f"{b.url}/", host="beta.example.com")
        assert status == 200 and body["proto"] == "HTTP/1.1"


async def test_plain_backend_refuses_http2() -> None:
    async with start_backend("alpha") as b:
        with pytest.raises(ConnectionError, match="HTTP/1"):
            await h2c_get(f"{b.url}/", timeout_s=5)


async def test_grpc_ping_unary_and_stream() -> None:
    async with start_backend("gamma", grpc=True) as b:
        assert await grpc_ping(b.address, "hi", authority="gamma.example.com") == "gamma:hi"
        replies = await grpc_ping_stream(b.address, ["1", "2", "3"], authority="gamma.example.com")
    assert replies == ["gamma:1", "gamma:2", "gamma:3"]


async def test_start_backends_runs_each_on_its_own_port() -> None:
    async with start_backends("red", "green", "blue") as backends:
        assert [b.name for b in backends] == ["red", "green", "blue"]
        assert len({b.port for b in backends}) == 3
        names = [(await get(b.url))[1]["name"] for b in backends]
    assert names == ["red", "green", "blue"]
    assert all(b.process.returncode == 0 for b in backends)


@pytest.mark.parametrize("mode", ["http1", "h2c", "grpc"])
async def test_sigterm_exits_zero(mode: str) -> None:
    b = await launch_backend("omega", h2c=mode == "h2c", grpc=mode == "grpc")
    try:
        started = time.monotonic()
        assert await b.stop(grace=5.0) == 0
        assert time.monotonic() - started < 5.0
    finally:
        await b.stop()


@pytest.mark.parametrize("h2c", [False, True])
async def test_sigterm_finishes_in_flight_requests(h2c: bool) -> None:
    b = await launch_backend("omega", h2c=h2c)
    try:
        client = h2c_get if h2c else get
        in_flight = asyncio.create_task(client(f"{b.url}/?sleep=700"))
        await asyncio.sleep(0.3)
        stopping = asyncio.create_task(b.stop(grace=5.0))
        status, body, _ = await in_flight
        assert status == 200 and body["name"] == "omega"
        assert await stopping == 0
        with pytest.raises(aiohttp.ClientConnectionError):
            await get(b.url)
    finally:
        await b.stop()
