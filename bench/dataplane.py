"""(c) Data path: the hello-world app direct, through a minimal static Envoy, and through
wakegate's gateway, in the same run.

The same app process is loaded with `hey` (and `wrk`) directly, then through two Envoys
started side by side from the same binary with the same `--concurrency`: a minimal
static configuration (one listener, one route, one cluster: what Envoy costs at least)
and a wakegate gateway configured over xDS as it is in production (scoped routes or
one route configuration, listener marking, Knative headers, retries, statistics
settings). Runs alternate between the three paths and are repeated; the figures are
medians. Target: the wakegate gateway ≥ 95 % of the static Envoy's throughput, as the
median ratio of each gateway run to the static run just before it. A run
over one connection adds the latency per request without queueing. The CPU figures say
who used the two cores during each run: the load generator, the app (single-threaded
Python) and Envoy all share them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import command_line
from bench.stack import cpu_seconds, gateway, machine_cpu, single_route, start_hello, table
from tests.support.backends import free_port
from wakegate.envoy_process import EnvoyGateway

HOST = "helloworld-go.default.example.com"
TARGET_RATIO = 0.95
DIRECT, STATIC, WAKEGATE = "direct", "static Envoy", "wakegate gateway"


@dataclass
class Load:
    tool: str
    connections: int
    path: str
    rps: float
    p50_s: float
    p99_s: float
    ok: int
    failed: int
    cpu: dict[str, float]
    """Share of one core used during the run, by process."""


def _seconds(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[unit]


def parse_hey(out: str) -> tuple[float, float, float, int, int]:
    """requests/s, p50 s, p99 s, 200 answers, other answers and errors."""
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    pct = dict(re.findall(r"(\d+)% in ([\d.]+) secs", out))
    codes = {int(c): int(n) for c, n in re.findall(r"\[(\d+)\]\s+(\d+) responses", out)}
    _, _, failures = out.partition("Error distribution:")
    errors = sum(int(n) for n in re.findall(r"^\s+\[(\d+)\]\s", failures, re.M))
    ok = codes.pop(200, 0)
    return rps, float(pct["50"]), float(pct["99"]), ok, sum(codes.values()) + errors


def parse_wrk(out: str) -> tuple[float, float, float, int, int]:
    """requests/s, p50 s, p99 s, answers, non-2xx/3xx answers and socket errors."""
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    pct = dict(re.findall(r"^\s+(\d+)%\s+([\d.]+\w+)\s*$", out, re.M))
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    bad += sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    return rps, _seconds(pct["50"]), _seconds(pct["99"]), total - bad, bad


def command(tool: str, url: str, host: str | None, duration: float, connections: int) -> list[str]:
    if tool == "hey":
        argv = ["hey", "-z", f"{duration:g}s", "-c", str(connections)]
        return [*argv, *(["-host", host] if host else []), url]
    argv = ["wrk", "-t", str(min(2, os.cpu_count() or 1, connections)), "-c", str(connections)]
    argv += ["-d", f"{duration:g}s", "--latency"]
    return [*argv, *(["-H", f"Host: {host}"] if host else []), url]


async def load(
    tool: str,
    path: str,
    url: str,
    host: str | None,
    *,
    duration: float,
    connections: int,
    warmup: float,
    pids: dict[str, int],
) -> Load:
    """One run of `tool`; CPU shares measured for the processes in `pids` and the tool."""
    if warmup > 0:
        await _exec(command(tool, url, host, warmup, connections))
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    busy, total = machine_cpu()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    out = await _exec(command(tool, url, host, duration, connections))
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy_after, total_after = machine_cpu()
    cpu = {name: (cpu_seconds(pid) - before[name]) / wall for name, pid in pids.items()}
    cpu[tool] = (after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime) / wall
    cores = (total_after - total) / wall
    cpu["machine"] = (busy_after - busy) / (total_after - total) * cores
    rps, p50, p99, ok, failed = (parse_hey if tool == "hey" else parse_wrk)(out)
    return Load(tool, connections, path, rps, p50, p99, ok, failed, cpu)


async def _exec(argv: list[str]) -> str:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await proc.communicate()
    text = out.decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} exited {proc.returncode}: {text[-500:]}")
    return text


def static_bootstrap(listen_port: int, app_port: int) -> dict[str, Any]:
    """A minimal Envoy: one listener, one route, one cluster, default settings."""
    address = {"socket_address": {"address": "127.0.0.1", "port_value": listen_port}}
    manager = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network."
        "http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "static",
        "route_config": {
            "name": "static",
            "virtual_hosts": [
                {
                    "name": "app",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "app"}}],
                }
            ],
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            }
        ],
    }
    endpoint = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": app_port}}}
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "static",
                    "address": address,
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": manager,
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [
                {
                    "name": "app",
                    "type": "STATIC",
                    "connect_timeout": "5s",
                    "load_assignment": {
                        "cluster_name": "app",
                        "endpoints": [{"lb_endpoints": [{"endpoint": endpoint}]}],
                    },
                }
            ],
        },
    }


@contextlib.asynccontextmanager
async def static_envoy(app_port: int, concurrency: int) -> AsyncIterator[tuple[str, int]]:
    """The minimal static Envoy in front of `app_port`: its URL and pid."""
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="wakegate-static-envoy-"))
    envoy = EnvoyGateway(
        static_bootstrap(port, app_port), workdir, log_level="warning", concurrency=concurrency
    )
    try:
        await envoy.start(30)
        assert envoy.pid is not None
        yield f"http://127.0.0.1:{port}/", envoy.pid
    finally:
        await envoy.stop(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


async def main_async(args: argparse.Namespace) -> None:
    tools = [t for t in args.tools if shutil.which(t)]
    missing = sorted(set(args.tools) - set(tools))
    print(
        f"== (c) data path: app direct vs a minimal static Envoy vs wakegate's gateway "
        f"({args.repeats} alternating runs of {args.duration:g} s per path, "
        f"{args.connections} connections) =="
    )
    if missing:
        print(f"not installed, skipped: {', '.join(missing)} (apt-get install {' '.join(missing)})")
    plans = [(tool, args.connections) for tool in tools]
    if args.latency and tools and args.connections != 1:
        plans.append(("wrk" if "wrk" in tools else "hey", 1))
    if not plans:
        return
    runs: list[Load] = []
    common = {"duration": args.duration, "warmup": args.warmup}
    async with start_hello() as app:
        direct = f"http://127.0.0.1:{app.port}/"
        for concurrency in args.concurrency:
            state = single_route("helloworld-go", HOST, app.port)
            async with (
                static_envoy(app.port, concurrency) as (static_url, static_pid),
                gateway(state, delta=args.xds == "delta", concurrency=concurrency) as gw,
            ):
                paths = [
                    (DIRECT, direct, None, {"app": app.pid}),
                    (STATIC, static_url, HOST, {"app": app.pid, "envoy": static_pid}),
                    (WAKEGATE, gw.url + "/", HOST, {"app": app.pid, "envoy": gw.envoy_pid}),
                ]
                workers = f" --concurrency {concurrency}"
                for _ in range(args.repeats):
                    for tool, conns in plans:
                        for name, url, host, pids in paths:
                            label = name if name == DIRECT else name + workers
                            runs.append(
                                await load(
                                    tool, label, url, host, connections=conns, pids=pids, **common
                                )
                            )
    report(runs)


def _median(runs: Sequence[Load]) -> Load:
    """A run whose figures are the medians of `runs` (CPU shares too)."""
    first = runs[0]
    cpu = {name: statistics.median(r.cpu.get(name, 0.0) for r in runs) for name in first.cpu}
    return Load(
        first.tool,
        first.connections,
        first.path,
        statistics.median(r.rps for r in runs),
        statistics.median(r.p50_s for r in runs),
        statistics.median(r.p99_s for r in runs),
        sum(r.ok for r in runs),
        sum(r.failed for r in runs),
        cpu,
    )


def report(runs: Sequence[Load]) -> None:
    grouped: dict[tuple[str, int, str], list[Load]] = {}
    for r in runs:
        grouped.setdefault((r.tool, r.connections, r.path), []).append(r)
    medians = {key: _median(group) for key, group in grouped.items()}
    rows = []
    for (tool, conns, path), r in sorted(
        medians.items(), key=lambda item: (item[0][1] == 1, item[0][0], item[0][2] != DIRECT)
    ):
        direct = medians[tool, conns, DIRECT]
        static_path = path.replace(WAKEGATE, STATIC)
        static = medians.get((tool, conns, static_path))
        samples = ", ".join(f"{x.rps:,.0f}" for x in grouped[tool, conns, path])
        if conns == 1:
            versus = "" if r is direct else f"p50 +{(r.p50_s - direct.p50_s) * 1000:.2f} ms"
            target = ""
        else:
            versus = "" if r is direct else f"{r.rps / direct.rps * 100:.0f}% of direct"
            target = ""
            if path.startswith(WAKEGATE) and static is not None:
                # Each run against the static run just before it: slow changes in what
                # else the machine runs cancel out.
                statics, ours = grouped[tool, conns, static_path], grouped[tool, conns, path]
                pairs = zip(statics, ours, strict=True)
                ratio = statistics.median(w.rps / s.rps for s, w in pairs)
                verdict = "met" if ratio >= TARGET_RATIO else "MISSED"
                target = (
                    f"{ratio * 100:.1f}% of static, paired (≥ {TARGET_RATIO * 100:.0f}% "
                    f"{verdict}); medians {r.rps / static.rps * 100:.1f}%"
                )
        rows.append(
            [
                f"{tool} -c {conns}",
                path,
                f"{r.rps:,.0f}",
                f"{r.p50_s * 1000:.2f}",
                f"{r.p99_s * 1000:.2f}",
                f"{r.ok:,}",
                f"{r.failed:,}",
                versus,
                target,
                " ".join(f"{name} {share * 100:.0f}%" for name, share in r.cpu.items()),
                samples,
            ]
        )
    header = ["load", "path", "req/s", "p50 ms", "p99 ms", "ok", "failed", "vs direct", "target"]
    print(table([*header, "CPU (100% = one core)", "req/s of each run"], rows, left=2))
    print(
        "Medians of the alternating runs; the target compares each gateway run with the "
        f"static run just before it (median of those ratios). {os.cpu_count()} cores shared "
        "by the load generator, "
        "the hello-world app (one asyncio thread), both Envoys (one idle at a time) and the "
        f"idle control plane; 'machine' is all CPU in use (of {100 * (os.cpu_count() or 1)}%, "
        "kernel networking included). Where it is near the top, the machine, not the app, is "
        "the limit, and each request Envoy proxies takes CPU the app then lacks. '-c 1': one "
        "request at a time, no queueing, so the p50 difference is the latency the hop adds."
    )


def parser() -> argparse.ArgumentParser:
    p = command_line("dataplane", __doc__)
    p.add_argument("--duration", type=float, default=5.0, help="seconds per measured run")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of load before each run")
    p.add_argument("--repeats", type=int, default=7, help="alternating runs per path")
    p.add_argument("--connections", type=int, default=50, help="concurrent connections")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1], help="Envoy workers")
    p.add_argument(
        "--xds", choices=("sotw", "delta"), default="delta", help="the gateway's xDS variant"
    )
    p.add_argument("--tools", nargs="+", choices=("hey", "wrk"), default=["hey", "wrk"])
    p.add_argument(
        "--latency",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also load over one connection: the latency Envoy adds without queueing",
    )
    return p


def run(argv: Sequence[str] = ()) -> None:
    asyncio.run(main_async(parser().parse_args(list(argv))))


if __name__ == "__main__":
    run(sys.argv[1:])
