"""(c) Data-path overhead: the hello-world app directly vs. through the Envoy gateway.

The same app process is loaded with `hey` (and `wrk`) directly, then through a real
Envoy routing its host, once per Envoy `--concurrency`. Target: through the gateway
≥ 90 % of the direct throughput. A run over one connection adds the latency per request
without queueing. The CPU figures say who used the two cores during each
run: the load generator, the app (single-threaded Python) and Envoy all share them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import resource
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from bench import command_line
from bench.stack import cpu_seconds, gateway, machine_cpu, single_route, start_hello, table

HOST = "helloworld-go.default.example.com"
TARGET_RATIO = 0.90


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


async def main_async(args: argparse.Namespace) -> None:
    tools = [t for t in args.tools if shutil.which(t)]
    missing = sorted(set(args.tools) - set(tools))
    print(
        f"== (c) data path: hello-world app direct vs through Envoy "
        f"({args.duration:g} s per run, {args.connections} connections) =="
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
        for tool, conns in plans:
            pids = {"app": app.pid}
            runs.append(
                await load(tool, "direct", direct, None, connections=conns, pids=pids, **common)
            )
        for concurrency in args.concurrency:
            state = single_route("helloworld-go", HOST, app.port)
            async with gateway(state, concurrency=concurrency) as gw:
                pids = {"app": app.pid, "envoy": gw.envoy_pid}
                path = f"Envoy --concurrency {concurrency}"
                for tool, conns in plans:
                    runs.append(
                        await load(
                            tool, path, gw.url + "/", HOST, connections=conns, pids=pids, **common
                        )
                    )
    report(runs)


def report(runs: Sequence[Load]) -> None:
    base = {(r.tool, r.connections): r for r in runs if r.path == "direct"}
    rows = []
    for r in sorted(runs, key=lambda r: (r.connections == 1, r.tool)):
        direct = base[r.tool, r.connections]
        tool = f"{r.tool} -c {r.connections}"
        if r.connections == 1:
            versus = "" if r is direct else f"p50 +{(r.p50_s - direct.p50_s) * 1000:.2f} ms"
            target = ""
        else:
            ratio = r.rps / direct.rps
            versus = f"{ratio * 100:.0f}%"
            verdict = "" if r is direct else ("met" if ratio >= TARGET_RATIO else "MISSED")
            target = f"≥ {TARGET_RATIO * 100:.0f}% {verdict}".rstrip()
        rows.append(
            [
                tool,
                r.path,
                f"{r.rps:,.0f}",
                f"{r.p50_s * 1000:.2f}",
                f"{r.p99_s * 1000:.2f}",
                f"{r.ok:,}",
                f"{r.failed:,}",
                versus,
                target,
                " ".join(f"{name} {share * 100:.0f}%" for name, share in r.cpu.items()),
            ]
        )
    header = ["load", "path", "req/s", "p50 ms", "p99 ms", "ok", "failed", "vs direct", "target"]
    print(table([*header, "CPU (100% = one core)"], rows, left=2))
    print(
        f"{os.cpu_count()} cores shared by the load generator, the hello-world app (one "
        "asyncio thread), Envoy and the idle control plane; 'machine' is all CPU in use "
        f"(of {100 * (os.cpu_count() or 1)}%, kernel networking included). Where it is near "
        "the top, the machine, not the app, is the limit, and each request Envoy proxies "
        "takes CPU the app then lacks. '-c 1': one request at a time, no queueing, so the "
        "p50 difference is the latency the extra hop adds."
    )


def parser() -> argparse.ArgumentParser:
    p = command_line("dataplane", __doc__)
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measured run")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of load before each run")
    p.add_argument("--connections", type=int, default=50, help="concurrent connections")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 2], help="Envoy workers")
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
