"""examples/helloworld/app.py, run as a real process with PORT and TARGET set."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp

from tests.support.backends import free_port, get

APP = Path(__file__).resolve().parents[1] / "examples" / "helloworld" / "app.py"


async def _wait_listening(proc: asyncio.subprocess.Process, port: int) -> bool:
    for _ in range(200):
        if proc.returncode is not None:
            return False
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return True
        await asyncio.sleep(0.025)
    raise TimeoutError("the app never listened")


@contextlib.asynccontextmanager
async def run_app(target: str | None) -> AsyncIterator[tuple[asyncio.subprocess.Process, int]]:
    """The app on a free port; a port taken between choice and bind is chosen again."""
    env = {k: v for k, v in os.environ.items() if k != "TARGET"}
    if target is not None:
        env["TARGET"] = target
    for _ in range(3):
        port = free_port()
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(APP),
            env={**env, "PORT": str(port)},
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            if await _wait_listening(proc, port):
                break
        except BaseException:
            proc.kill()
            await proc.wait()
            raise
        await proc.wait()
    else:
        raise RuntimeError("the app could not bind a port")
    try:
        yield proc, port
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_answers_hello_target() -> None:
    async with run_app("wakegate") as (_, port):
        status, body, headers = await get(f"http://127.0.0.1:{port}/", host="hello.example.com")
        assert (status, body) == (200, "Hello wakegate!\n")
        assert headers["Content-Type"].startswith("text/plain")
        async with aiohttp.ClientSession() as session:
            async with session.head(f"http://127.0.0.1:{port}/") as resp:
                assert resp.status == 200 and await resp.read() == b""
            # A chunked request body is consumed, and the connection is reused after it.
            for _ in range(2):
                async with session.post(f"http://127.0.0.1:{port}/x", data=_chunks()) as resp:
                    assert await resp.text() == "Hello wakegate!\n"


async def _chunks() -> AsyncIterator[bytes]:
    for part in (b"a" * 10, b"b" * 20):
        yield part


async def test_target_defaults_to_world() -> None:
    async with run_app(None) as (_, port):
        status, body, _ = await get(f"http://127.0.0.1:{port}/")
    assert (status, body) == (200, "Hello World!\n")


async def test_sigterm_finishes_in_flight_request_then_exits_zero() -> None:
    async with run_app("drain") as (proc, port):
        # An idle keep-alive connection must not hold the exit up.
        idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n12345")
        await writer.drain()
        await asyncio.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.2)
        writer.write(b"67890")
        await writer.drain()
        response = await asyncio.wait_for(reader.read(), 5)
        assert response.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"Connection: close\r\n" in response
        assert response.endswith(b"\r\n\r\nHello drain!\n")
        assert await asyncio.wait_for(proc.wait(), 5) == 0
        assert await idle_reader.read() == b""
        for w in (writer, idle_writer):
            w.close()
