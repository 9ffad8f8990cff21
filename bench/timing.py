"""The timing client: a process of its own that sends the timed requests and starts the
app for the baseline, so neither waits on the event loop of the stack being measured.

    async with start_client(poll_s=0.005) as timing:
        app_start_s = await timing.start_app()
        sent, first_byte, status = await timing.get(port, host)
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

from bench import python_child
from bench.local import EXAMPLE
from bench.stack import HELLO_APP
from tests.support.backends import LOOPBACK, free_port
from wakegate.stack import LocalStack

# --- the client's side (its own process) -------------------------------------------------


def _status(port: int, host: str, timeout: float) -> int:
    """GET / with `host` on a fresh connection; the status, 0 when the connection failed.

    Returns once the response is read, without waiting for the connection to close
    (Envoy delays closing after a response it made itself, such as a 404).
    """
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=max(timeout, 0.001))
    try:
        conn.request("GET", "/", headers={"Host": host})
        response = conn.getresponse()
        response.read()
        return response.status
    except (OSError, http.client.HTTPException):
        return 0
    finally:
        conn.close()


def _poll(
    port: int, host: str, since_ns: int, timeout: float, poll_s: float
) -> tuple[int, int, str]:
    """GET every `poll_s` until a 200: when it came (monotonic ns, 0 on timeout), when
    the last request that got something else was sent, and the statuses seen, as
    `404x37 200x1`."""
    seen: Counter[int] = Counter()
    deadline = since_ns + int(timeout * 1e9)
    missed = 0
    while (started := time.monotonic_ns()) < deadline:
        status = _status(port, host, (deadline - started) / 1e9)
        seen[status] += 1
        if status == 200:
            return time.monotonic_ns(), missed, _seen(seen)
        missed = started
        time.sleep(max(0.0, (started - time.monotonic_ns()) / 1e9 + poll_s))
    return 0, missed, _seen(seen)


def _seen(seen: Counter[int]) -> str:
    return " ".join(f"{status}x{n}" for status, n in seen.items()) or "-"


def _get(port: int, host: str, timeout: float = 60.0) -> tuple[int, int, int]:
    """GET / on a fresh connection: sent, first byte (monotonic ns), status."""
    request = f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    sent = time.monotonic_ns()
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as sock:
        sock.sendall(request)
        data = sock.recv(65536)
        first = time.monotonic_ns()
        while chunk := sock.recv(65536):
            data += chunk
    parts = data.split(b" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    return sent, first, status


def _apply(
    api_port: int,
    token: str,
    gw_port: int,
    host: str,
    query: str,
    body_path: str,
    timeout: float,
    poll_s: float,
) -> tuple[int, int, int, int, int, str]:
    """PUT the manifest and poll the gateway from that moment: sent, API replied, API
    status, first 200 (monotonic ns; 0 = not within `timeout`), last request without a
    200 sent, and the statuses seen."""
    body = Path(body_path).read_bytes()
    reply: list[int] = [0, 0]

    def put() -> None:
        conn = http.client.HTTPConnection(LOOPBACK, api_port, timeout=timeout + 30)
        try:
            conn.request(
                "PUT",
                f"/v1/manifests?{query}",
                body=body,
                headers={"Authorization": f"Bearer {token}"},
            )
            response = conn.getresponse()
            response.read()
            reply[:] = [time.monotonic_ns(), response.status]
        except OSError:
            reply[:] = [time.monotonic_ns(), 0]
        finally:
            conn.close()

    thread = threading.Thread(target=put, daemon=True)
    sent = time.monotonic_ns()
    thread.start()
    first_ok, missed, seen = _poll(gw_port, host, sent, timeout, poll_s)
    thread.join(timeout + 30)
    return sent, reply[0], reply[1], first_ok, missed, seen


def _start_app(poll_s: float, timeout: float = 30.0) -> tuple[int, int]:
    """Spawn the hello-world app and poll it every `poll_s` until it answers 200:
    spawned, first 200 (monotonic ns). The app is stopped before returning."""
    port = free_port()
    env = {**os.environ, "PORT": str(port), "HOST": LOOPBACK, "PYTHONUNBUFFERED": "1"}
    spawned = time.monotonic_ns()
    proc = subprocess.Popen(
        [sys.executable, str(HELLO_APP)],
        cwd=EXAMPLE,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        first_ok, _, _ = _poll(port, "localhost", spawned, timeout, poll_s)
        if not first_ok:
            exited = proc.poll()
            if exited is not None:
                raise RuntimeError(f"the hello-world app exited with {exited}")
            raise RuntimeError(f"the hello-world app did not answer within {timeout:g}s")
        return spawned, first_ok
    finally:
        proc.terminate()
        proc.wait(10)


def client() -> None:
    """Answer timing commands read from stdin, one line each, until stdin ends:
    `get PORT HOST` → `SENT FIRST_BYTE STATUS`;
    `apply API TOKEN GW HOST QUERY BODY TIMEOUT POLL` → `SENT REPLIED STATUS FIRST_OK MISSED
    SEEN…`;
    `start POLL` → `SPAWNED FIRST_OK`."""
    for line in sys.stdin:
        kind, *args = line.split()
        if kind == "get":
            print(*_get(int(args[0]), args[1]), flush=True)
        elif kind == "apply":
            api, token, gw, host, query, body, timeout, poll = args
            out = _apply(int(api), token, int(gw), host, query, body, float(timeout), float(poll))
            print(*out, flush=True)
        elif kind == "start":
            print(*_start_app(float(args[0])), flush=True)


# --- the benchmark's side ----------------------------------------------------------------


@dataclass
class Applied:
    sent: int
    replied: int
    status: int
    first_ok: int
    missed: int
    seen: str


class Client:
    """The benchmark's end of a running `client()` process, polling every `poll_s`."""

    def __init__(self, process: asyncio.subprocess.Process, poll_s: float) -> None:
        self.process = process
        self.poll_s = poll_s

    async def _call(self, line: str, timeout: float) -> str:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(line.encode() + b"\n")
        await self.process.stdin.drain()
        reply = await asyncio.wait_for(self.process.stdout.readline(), timeout)
        if not reply:
            raise RuntimeError(f"the timing client exited with {await self.process.wait()}")
        return reply.decode().strip()

    async def get(self, port: int, host: str) -> tuple[int, int, int]:
        """Sent and first byte (monotonic ns), and the status of one GET."""
        sent, first, status = (int(v) for v in (await self._call(f"get {port} {host}", 90)).split())
        return sent, first, status

    async def apply(
        self, stack: LocalStack, host: str, body: Path, *, wait: bool, timeout: float
    ) -> Applied:
        """PUT the manifest in `body` and poll the gateway with `host` until a 200."""
        query = {"dir": str(EXAMPLE), "timeout": f"{timeout:g}", **({"wait": "1"} if wait else {})}
        args = (
            f"{stack.api_port} {stack.api_token} {stack.config.port} {host} "
            f"{urlencode(query)} {body}"
        )
        reply = await self._call(f"apply {args} {timeout:g} {self.poll_s:g}", timeout + 60)
        *times, seen = reply.split(" ", 5)
        sent, replied, status, first_ok, missed = (int(t) for t in times)
        return Applied(sent, replied, status, first_ok, missed, seen)

    async def start_app(self) -> float:
        """Seconds from spawning the app to its first 200."""
        spawned, first_ok = (
            int(v) for v in (await self._call(f"start {self.poll_s:g}", 60)).split()
        )
        return (first_ok - spawned) / 1e9


@contextlib.asynccontextmanager
async def start_client(poll_s: float) -> AsyncIterator[Client]:
    """A timing client process, stopped on leaving."""
    async with python_child("from bench.timing import client; client()") as proc:
        yield Client(proc, poll_s)
