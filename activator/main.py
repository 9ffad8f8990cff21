"""The activator process.

    python -m wakegate.activator.main --listen 127.0.0.1:8081 --control-plane 127.0.0.1:18000

It serves HTTP/1.1 on `--listen` (the port the gateway's activator cluster points at;
or on the listening socket inherited as file descriptor `--listen-fd`, which its
supervisor keeps open across restarts so that connections arriving meanwhile wait in
the socket's backlog instead of being refused;
`/healthz` and `/metrics` on the same port answer requests without the Knative headers),
HTTP/2 with prior knowledge (h2c, gRPC) on `--listen-h2c` (or the inherited
`--listen-h2c-fd`) when given, and keeps its streams to the control plane's
`wakegate.proto.v1.Autoscaler` service at `--control-plane`. Once listening it prints
`READY <port>` on stdout, followed by the h2c port when there is one (`:0` picks a free
port). SIGTERM or SIGINT stops accepting connections and lets requests in progress
finish for up to `--drain-timeout` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable

import uvloop
from aiohttp import web

from wakegate.activator.client import ControlPlaneClient
from wakegate.activator.h2c import H2Proxy
from wakegate.activator.http1 import Http1Server
from wakegate.activator.metrics import ActivatorMetrics
from wakegate.activator.proxy import DEFAULT_BUFFER_LIMIT, DEFAULT_CONNECT_TIMEOUT_S, Activator
from wakegate.activator.revisions import DEFAULT_HOLD_TIMEOUT_S, DEFAULT_MAX_QUEUED, Revisions

log = logging.getLogger("wakegate.activator")


def _host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


def _positive(kind: type[int] | type[float]) -> Callable[[str], int | float]:
    def parse(value: str) -> int | float:
        try:
            number = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
        if number <= 0:
            raise argparse.ArgumentTypeError(f"must be greater than 0: {value!r}")
        return number

    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m wakegate.activator.main",
        description="Holds requests for revisions with no ready pod and forwards them "
        "once a pod is ready.",
    )
    listen = parser.add_mutually_exclusive_group(required=True)
    listen.add_argument("--listen", type=_host_port, metavar="HOST:PORT", help="HTTP address")
    listen.add_argument(
        "--listen-fd",
        type=int,
        metavar="FD",
        help="serve on this inherited, already listening TCP socket",
    )
    h2c = parser.add_mutually_exclusive_group()
    h2c.add_argument(
        "--listen-h2c",
        type=_host_port,
        metavar="HOST:PORT",
        help="h2c (HTTP/2 prior knowledge, gRPC) address, for revisions whose port speaks h2c",
    )
    h2c.add_argument(
        "--listen-h2c-fd",
        type=int,
        metavar="FD",
        help="serve h2c on this inherited, already listening TCP socket",
    )
    parser.add_argument(
        "--control-plane",
        required=True,
        metavar="HOST:PORT",
        help="gRPC address of the control plane's Autoscaler service",
    )
    parser.add_argument(
        "--hold-timeout",
        type=_positive(float),
        default=DEFAULT_HOLD_TIMEOUT_S,
        metavar="SECONDS",
        help="how long a request may wait for a pod (a revision may set its own; "
        "default %(default)g)",
    )
    parser.add_argument(
        "--max-queued",
        type=_positive(int),
        default=DEFAULT_MAX_QUEUED,
        metavar="N",
        help="requests held per revision before answering 503 (default %(default)d)",
    )
    parser.add_argument(
        "--stats-interval",
        type=_positive(float),
        default=1.0,
        metavar="SECONDS",
        help="how often to report load to the control plane (default %(default)g)",
    )
    parser.add_argument(
        "--buffer-limit",
        type=int,
        default=DEFAULT_BUFFER_LIMIT,
        metavar="BYTES",
        help="request bodies with a Content-Length up to this are buffered so the request "
        "can go to another pod if its pod drops the connection (default %(default)d)",
    )
    parser.add_argument(
        "--connect-timeout",
        type=_positive(float),
        default=DEFAULT_CONNECT_TIMEOUT_S,
        metavar="SECONDS",
        help="timeout to connect to a pod (default %(default)g)",
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="on SIGTERM, how long requests in progress may finish (default %(default)g)",
    )
    parser.add_argument(
        "--id",
        default=f"activator-{socket.gethostname()}-{os.getpid()}",
        help="sender id in stats reports (default activator-HOST-PID)",
    )
    parser.add_argument(
        "--stop-on-stdin-eof",
        action="store_true",
        help="also stop when stdin closes, i.e. when the process that started this one died",
    )
    parser.add_argument("--log-level", default="INFO", help="default %(default)s")
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if args.stop_on_stdin_eof:
        await _watch_stdin(stop.set)

    revisions = Revisions(max_queued=args.max_queued, hold_timeout_s=args.hold_timeout)
    client = ControlPlaneClient(
        args.control_plane, revisions, sender=args.id, stats_interval_s=args.stats_interval
    )
    revisions.on_poke = client.poke
    metrics = ActivatorMetrics(revisions, lambda: client.connected)
    activator = Activator(
        revisions,
        metrics,
        buffer_limit=args.buffer_limit,
        connect_timeout_s=args.connect_timeout,
    )
    runner = web.AppRunner(
        activator.application(),
        access_log=None,
        handler_cancellation=True,
        shutdown_timeout=args.drain_timeout,
    )
    await runner.setup()
    if args.listen_fd is not None:
        sock = socket.socket(fileno=args.listen_fd)
    else:
        family = socket.AF_INET6 if ":" in args.listen[0] else socket.AF_INET
        sock = socket.create_server(args.listen, family=family, backlog=1024)
    host = str(sock.getsockname()[0])
    bound = int(sock.getsockname()[1])
    assert runner.server is not None
    http1 = Http1Server(
        revisions, metrics, activator.pool, runner.server, buffer_limit=args.buffer_limit
    )
    await http1.start(sock)
    h2c: H2Proxy | None = None
    ports = [str(bound)]
    if args.listen_h2c is not None or args.listen_h2c_fd is not None:
        h2c = H2Proxy(revisions, metrics, connect_timeout_s=args.connect_timeout)
        if args.listen_h2c_fd is not None:
            ports.append(str(await h2c.start(sock=socket.socket(fileno=args.listen_h2c_fd))))
        else:
            ports.append(str(await h2c.start(*args.listen_h2c)))
    await client.start()
    log.info("activator %s listening on %s:%s", args.id, host, " and ".join(ports))
    print(f"READY {' '.join(ports)}", flush=True)
    try:
        await stop.wait()
        log.info("stopping; draining requests for up to %gs", args.drain_timeout)
    finally:
        stops = [http1.stop(args.drain_timeout), runner.cleanup()]
        if h2c is not None:
            stops.append(h2c.stop(args.drain_timeout))
        await asyncio.gather(*stops)
        await client.close()


async def _watch_stdin(on_eof: Callable[[], None]) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def watch() -> None:
        while await reader.read(4096):
            pass
        on_eof()

    task = loop.create_task(watch())
    _background.add(task)


_background: set[asyncio.Task[None]] = set()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    uvloop.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
