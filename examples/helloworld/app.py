"""The Knative hello-world app: answers ``Hello $TARGET!`` on ``$PORT``.

It is a scale-from-zero pod, so it uses only the standard library (importing an HTTP
framework would double its start time). It speaks HTTP/1.1 with keep-alive. On SIGTERM
or SIGINT it stops accepting, closes idle connections, finishes the requests in flight
and exits 0. ``HOST`` (default 127.0.0.1) chooses the listening address.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time

TARGET = os.environ.get("TARGET", "World")
BODY = f"Hello {TARGET}!\n".encode()
DRAIN_SECONDS = 30.0
MAX_HEAD = 64 * 1024


class BadRequest(Exception):
    pass


def _response(status: str, body: bytes, *, keep_alive: bool, head_only: bool = False) -> bytes:
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime())
    lines = [
        f"HTTP/1.1 {status}",
        f"Date: {date}",
        "Content-Type: text/plain; charset=utf-8",
        f"Content-Length: {len(body)}",
        f"Connection: {'keep-alive' if keep_alive else 'close'}",
    ]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode()
    return head if head_only else head + body


async def _discard_chunked(reader: asyncio.StreamReader) -> None:
    while True:
        size_line = await reader.readuntil(b"\r\n")
        try:
            size = int(size_line.split(b";")[0].strip(), 16)
        except ValueError as exc:
            raise BadRequest("bad chunk size") from exc
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":
                pass  # trailers
            return
        await reader.readexactly(size + 2)


class HelloServer:
    def __init__(self) -> None:
        self.closing = False
        self.idle: set[asyncio.StreamWriter] = set()
        self.handlers: set[asyncio.Task[None]] = set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        try:
            while not self.closing:
                self.idle.add(writer)
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                except asyncio.LimitOverrunError:
                    writer.write(
                        _response("431 Request Header Fields Too Large", b"", keep_alive=False)
                    )
                    return
                finally:
                    self.idle.discard(writer)
                try:
                    keep_alive = await self._serve(head, reader, writer)
                except (BadRequest, ValueError, asyncio.LimitOverrunError):
                    writer.write(_response("400 Bad Request", b"", keep_alive=False))
                    return
                await writer.drain()
                if not keep_alive:
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            self.handlers.discard(task)
            writer.close()

    async def _serve(
        self, head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        method, _target, version = request_line.split(" ")
        if not version.startswith("HTTP/1."):
            raise BadRequest(version)
        headers: dict[str, str] = {}
        for line in header_lines:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        connection = headers.get("connection", "").lower()
        keep_alive = "close" not in connection and (
            version == "HTTP/1.1" or "keep-alive" in connection
        )
        if headers.get("expect", "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if "chunked" in headers.get("transfer-encoding", "").lower():
            await _discard_chunked(reader)
        elif (length := int(headers.get("content-length", "0"))) > 0:
            await reader.readexactly(length)
        keep_alive = keep_alive and not self.closing
        writer.write(_response("200 OK", BODY, keep_alive=keep_alive, head_only=method == "HEAD"))
        return keep_alive

    async def drain(self) -> None:
        """Closes idle connections and waits for the requests in flight."""
        self.closing = True
        for writer in list(self.idle):
            writer.close()
        if self.handlers:
            await asyncio.wait(list(self.handlers), timeout=DRAIN_SECONDS)


async def main() -> None:
    port = int(os.environ.get("PORT", "8080"))
    host = os.environ.get("HOST", "127.0.0.1")
    app = HelloServer()
    server = await asyncio.start_server(app.handle, host, port, limit=MAX_HEAD)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"helloworld: listening on {host}:{port}", file=sys.stderr, flush=True)
    await stop.wait()
    server.close()
    await app.drain()


if __name__ == "__main__":
    asyncio.run(main())
