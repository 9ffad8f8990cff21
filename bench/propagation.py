"""(b) Propagation latency: a rule change → a real Envoy serving it, 1,000 rules loaded.

A probe ingress appends `Gen: <i>` to every request; the echo backend reflects the
request headers, and a client in its own process polls the gateway back to back and
timestamps the first response showing each new value. A change is timed from just
before `ControlPlane.apply_ingress()` to that response (served), and to the return of
`cp.wait_served()` (ACKed). Changes are spaced by a gap longer than the debounce, so
each one meets an idle control plane.

Two kinds of change: the probe's header only (same cluster), and the probe moved to a
fresh backend ref each time (new cluster), which goes out make-before-break.

Targets: served p50 ≤ 50 ms, p99 ≤ 200 ms. Baseline: the poller's plain round trip
through the gateway with no change in flight, measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import http.client
import json
import os
import re
import select
import sys
import time
import urllib.parse
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from bench import command_line, python_child
from bench.stack import (
    Gateway,
    backend_key,
    gateway,
    loopback,
    mb,
    ms,
    percentile,
    proc_status,
    route,
    start_echo,
    table,
)
from bench.synthetic import state
from wakegate.ingress.model import Ingress
from wakegate.xds.controlplane import ControlPlane
from wakegate.xds.resources import ROUTE
from wakegate.xds.scopes import scoped_name
from wakegate.xds.translate import HTTP_ROUTES

PROBE_HOST = "probe.default.example.com"
PROBE = "probe"
TARGET_P50_S = 0.050
TARGET_P99_S = 0.200


# --- the polling client (its own process) ------------------------------------------------


def poll(port: int, host: str, interval_s: float = 0.0) -> None:
    """GET / with Host `host` on loopback `port` over one keep-alive connection, back to
    back or `interval_s` apart.

    Prints `gen <value> <monotonic ns>` whenever the Gen header the backend saw changes
    (`status-<code>` for a non-200 answer, `error` when the request failed); on an `rtt`
    line on stdin prints `rtt <p50> <p95> <p99> <max> <count>` (ns) of the round trips
    since the previous one. Returns at the end of stdin.
    """
    conn: http.client.HTTPConnection | None = None
    last: str | None = None
    rtts: list[int] = []
    pending = b""
    while True:
        if select.select([0], [], [], interval_s)[0]:
            data = os.read(0, 4096)
            if not data:
                return
            pending += data
            while b"\n" in pending:
                line, _, pending = pending.partition(b"\n")
                if line.strip() == b"rtt":
                    stats = [percentile(rtts, p) for p in (50, 95, 99, 100)] if rtts else [0] * 4
                    print("rtt", *stats, len(rtts), flush=True)
                    rtts.clear()
        t0 = time.monotonic_ns()
        try:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/", headers={"Host": host})
            response = conn.getresponse()
            body = response.read()
            seen = (
                json.loads(body)["headers"].get("gen", "none")
                if response.status == 200
                else f"status-{response.status}"
            )
        except (OSError, http.client.HTTPException, ValueError):
            if conn is not None:
                conn.close()
            conn = None
            seen = "error"
        t1 = time.monotonic_ns()
        rtts.append(t1 - t0)
        if seen != last:
            print("gen", seen, t1, flush=True)
            last = seen


@dataclass
class Poller:
    """The benchmark's end of a running `poll()` process."""

    process: asyncio.subprocess.Process
    gens: asyncio.Queue[tuple[str, int]] = field(default_factory=asyncio.Queue)
    rtts: asyncio.Queue[list[int]] = field(default_factory=asyncio.Queue)

    async def _read(self) -> None:
        assert self.process.stdout is not None
        while line := await self.process.stdout.readline():
            kind, *values = line.decode().split()
            if kind == "gen":
                await self.gens.put((values[0], int(values[1])))
            elif kind == "rtt":
                await self.rtts.put([int(v) for v in values])

    async def until(self, gen: str, timeout: float) -> tuple[int | None, list[str]]:
        """When `gen` was first seen (monotonic ns), and the other values seen before it."""
        others: list[str] = []
        try:
            async with asyncio.timeout(timeout):
                while True:
                    seen, at = await self.gens.get()
                    if seen == gen:
                        return at, others
                    others.append(seen)
        except TimeoutError:
            return None, others

    async def round_trips(self) -> list[int]:
        """p50, p95, p99, max (ns) and count of the round trips since the last call."""
        assert self.process.stdin is not None
        self.process.stdin.write(b"rtt\n")
        await self.process.stdin.drain()
        return await asyncio.wait_for(self.rtts.get(), 10)


@contextlib.asynccontextmanager
async def start_poller(port: int, host: str, interval_s: float = 0.0) -> AsyncIterator[Poller]:
    """`poll()` in a process of its own, so its work does not share the control plane's loop."""
    code = f"from bench.propagation import poll; poll({port}, {host!r}, {interval_s!r})"
    async with python_child(code) as proc:
        poller = Poller(proc)
        reader = asyncio.create_task(poller._read())
        try:
            yield poller
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader


# --- the changes -------------------------------------------------------------------------


@dataclass
class Series:
    """Latencies (s) of one kind of change, from just before it was applied."""

    label: str
    served: list[float] = field(default_factory=list)
    acked: list[float] = field(default_factory=list)
    published: list[float] = field(default_factory=list)
    """Until the control plane set the snapshot with the change (the last step's)."""
    glitches: list[str] = field(default_factory=list)
    """Answers other than the old or the new content seen during a change."""
    missed: int = 0
    """Changes not served, or not ACKed, within the timeout."""
    pushed: list[int] = field(default_factory=list)
    """Bytes of xDS responses the gateway was sent for each change."""
    envoy: str = ""
    """Envoy's own update time for the resource type that changed."""


def probe(gen: int, backend: str = PROBE) -> Ingress:
    """The probe ingress at generation `gen`: it appends `Gen: <gen>` to every request."""
    return route(PROBE, PROBE_HOST, backend=backend, headers=(("Gen", str(gen)),), generation=gen)


async def changes(
    cp: ControlPlane,
    poller: Poller,
    gens: range,
    *,
    echo_port: int,
    new_cluster: bool,
    gap_s: float,
    timeout: float = 10.0,
) -> Series:
    """Apply one probe change per generation in `gens`, each once the previous one is served."""
    series = Series("new cluster" if new_cluster else "same cluster")
    backend = PROBE
    for gen in gens:
        old = backend
        before = pushed_bytes(cp)
        t0 = time.monotonic_ns()
        if new_cluster:
            backend = f"{PROBE}-{gen:05d}"
            cp.set_backend(backend_key(backend), loopback(echo_port))
        cp.apply_ingress(probe(gen, backend))
        if new_cluster:
            cp.delete_backend(backend_key(old))
        acked = await cp.wait_served(timeout=timeout)
        t_ack = time.monotonic_ns()
        seen, others = await poller.until(str(gen), timeout)
        series.glitches += others
        series.pushed.append(pushed_bytes(cp) - before)
        if seen is None or not acked or cp.last is None:
            series.missed += 1
        else:
            series.served.append((seen - t0) / 1e9)
            series.acked.append((t_ack - t0) / 1e9)
            series.published.append(cp.last.at - t0 / 1e9)
        await asyncio.sleep(gap_s)
    if backend != PROBE:
        cp.set_backend(backend_key(PROBE), loopback(echo_port))
        cp.apply_ingress(probe(gens.stop, PROBE))
        cp.delete_backend(backend_key(backend))
        await cp.wait_served(timeout=timeout)
        await poller.until(str(gens.stop), timeout)
    return series


def pushed_bytes(cp: ControlPlane) -> int:
    """Bytes of xDS responses sent so far to the connected gateway(s)."""
    return sum(node.pushed_bytes for node in cp.server.nodes() if node.connected)


async def envoy_p50(gw: Gateway, pattern: str) -> str:
    """The cumulative p50 of the first of Envoy's histograms whose whole name matches the
    regular expression `pattern`, as printed by its admin."""
    text = await gw.envoy.admin_get("/stats?filter=" + urllib.parse.quote(f"^{pattern}$"))
    for line in text.splitlines():
        name, _, values = line.partition(":")
        if re.fullmatch(pattern, name) and "P50(" in values:
            value = float(values.split("P50(", 1)[1].split(")", 1)[0].split(",")[-1])
            return f"{value:.1f}" if value else "< 1"
    return "-"


@dataclass
class ModeResult:
    mode: str
    baseline: list[int]
    churn: list[int]
    series: list[Series]
    envoy_rss: int = 0
    control_plane_rss: int = 0
    """VmRSS of the gateway and of this process (the control plane) after the changes."""


async def measure_mode(
    mode: str,
    echo_port: int,
    *,
    rules: int,
    counts: tuple[int, int],
    gap_s: float,
    baseline_s: float,
    concurrency: int,
    debounce_s: float | None,
    poll_interval_s: float,
) -> ModeResult:
    base = state(rules, port=echo_port)
    st = dataclasses.replace(
        base,
        ingresses=(*base.ingresses, probe(0)),
        backends={**base.backends, backend_key(PROBE): loopback(echo_port)},
    )
    async with (
        gateway(st, delta=mode == "delta", concurrency=concurrency, debounce_s=debounce_s) as gw,
        start_poller(gw.config.external_port, PROBE_HOST, poll_interval_s) as poller,
    ):
        if (await poller.until("0", 30))[0] is None:
            raise RuntimeError("the probe host is not served")
        await asyncio.sleep(0.5)
        await poller.round_trips()
        await asyncio.sleep(baseline_s)
        baseline = await poller.round_trips()
        results = []
        first = 1
        for new_cluster, count in zip((False, True), counts, strict=True):
            if count <= 0:
                continue
            gens = range(first, first + count)
            first += count + 1
            series = await changes(
                gw.cp, poller, gens, echo_port=echo_port, new_cluster=new_cluster, gap_s=gap_s
            )
            # Both plain-HTTP listeners share the probe's route configuration (`http`
            # whole, or the probe's scope of it); Envoy keeps its RDS stats under the
            # stat prefix of whichever listener it built first.
            name = HTTP_ROUTES if mode == "sotw" else scoped_name(HTTP_ROUTES, PROBE)
            rds = await envoy_p50(gw, rf"http\.\w+\.rds\.{re.escape(name)}\.update_duration")
            snapshot = gw.cp.cache.get_snapshot(gw.cp.group)
            if snapshot is not None and mode == "sotw":
                snapshot = snapshot.for_sotw()
            size = len(snapshot.resources[ROUTE][name]) if snapshot else 0
            # Each scope's RDS statistics are not kept (see xds.bootstrap).
            timing = f"RDS update p50 {rds} ms, " if rds != "-" else ""
            series.envoy = f"{timing}route configuration {name} {size:,} B"
            if new_cluster:
                cds = await envoy_p50(gw, "cluster_manager.cds.update_duration")
                series.envoy = f"CDS update p50 {cds} ms (since start), " + series.envoy
            results.append(series)
        churn = await poller.round_trips()
        envoy_rss = proc_status(gw.envoy_pid)["VmRSS"]
        control_plane_rss = proc_status(os.getpid())["VmRSS"]
    return ModeResult(mode, baseline, churn, results, envoy_rss, control_plane_rss)


# --- report ----------------------------------------------------------------------------


def _row(what: str, values: Sequence[float], base_p50: float, target: str) -> list[str]:
    if not values:
        return [what, "-", "-", "-", "-", "-", target]
    p50 = percentile(values, 50)
    ratio = f"{p50 / base_p50:,.0f}x" if target and base_p50 else ""
    return [what, *(ms(percentile(values, p)) for p in (50, 95, 99, 100)), ratio, target]


def _verdict(values: Sequence[float]) -> str:
    if not values:
        return "no data"
    p50, p99 = percentile(values, 50), percentile(values, 99)
    return (
        f"p50 {'met' if p50 <= TARGET_P50_S else 'MISSED'}, "
        f"p99 {'met' if p99 <= TARGET_P99_S else 'MISSED'}"
    )


def report(results: Sequence[ModeResult], rules: int, gap_s: float, poll_s: float) -> None:
    target = f"p50 ≤ {TARGET_P50_S * 1000:.0f}, p99 ≤ {TARGET_P99_S * 1000:.0f}"
    rows: list[list[str]] = []
    notes: list[str] = []
    for r in results:
        base = [v / 1e9 for v in r.baseline[:4]]
        rows.append([f"{r.mode}: round trip, no change (baseline)", *map(ms, base), "1x", ""])
        for s in r.series:
            rows.append(_row(f"{r.mode}: {s.label}: served", s.served, base[0], target))
            rows.append(_row(f"{r.mode}: {s.label}: ACKed", s.acked, base[0], ""))
            rows.append(_row(f"{r.mode}: {s.label}: snapshot set", s.published, base[0], ""))
            problems = (
                f"{len(s.glitches)} unexpected answers {sorted(set(s.glitches))[:5]}, "
                f"{s.missed} changes missed"
                if s.glitches or s.missed
                else "no unexpected answer, none missed"
            )
            sent = (
                f"xDS bytes sent per change p50 {percentile(s.pushed, 50):,} max "
                f"{max(s.pushed):,}"
                if s.pushed
                else "no bytes sent"
            )
            notes.append(
                f"{r.mode} {s.label} ({len(s.served)} changes): served {_verdict(s.served)}; "
                f"{problems}; {sent}; Envoy {s.envoy}"
            )
        churn = [v / 1e9 for v in r.churn[:4]]
        rows.append([f"{r.mode}: round trip during the changes", *map(ms, churn), "", ""])
        notes.append(
            f"{r.mode}: after the changes, RSS of Envoy {mb(r.envoy_rss)} MB, of the control "
            f"plane (this process) {mb(r.control_plane_rss)} MB"
        )
    print(table(["ms", "p50", "p95", "p99", "max", "p50 vs base", "target (ms)"], rows))
    for note in notes:
        print(note)
    polling, slack = (
        ("back to back", "one round trip")
        if poll_s <= 0
        else (f"every {poll_s * 1000:g} ms", f"{poll_s * 1000:g} ms plus a round trip")
    )
    print(
        f"{rules:,} rules + 1 probe; {gap_s * 1000:g} ms pause after each change; the client "
        f"polls {polling} from its own process, so 'served' overstates by up to {slack}; "
        "'snapshot set' = apply → the control plane set the snapshot carrying the change "
        "(for a new cluster: the last of its steps)"
    )


async def main_async(args: argparse.Namespace) -> None:
    print(f"== (b) propagation: rule change → Envoy serving it ({args.rules:,} rules) ==")
    results = []
    async with start_echo() as echo:
        for mode in args.xds:
            results.append(
                await measure_mode(
                    mode,
                    echo.port,
                    rules=args.rules,
                    counts=(args.changes, args.new_cluster_changes),
                    gap_s=args.gap_ms / 1000,
                    baseline_s=args.baseline_s,
                    concurrency=args.concurrency,
                    debounce_s=None if args.debounce_ms is None else args.debounce_ms / 1000,
                    poll_interval_s=args.poll_interval_ms / 1000,
                )
            )
    report(results, args.rules, args.gap_ms / 1000, args.poll_interval_ms / 1000)


def parser() -> argparse.ArgumentParser:
    p = command_line("propagation", __doc__)
    p.add_argument("--rules", type=int, default=1_000, help="rules loaded besides the probe")
    p.add_argument("--changes", type=int, default=200, help="same-cluster changes")
    p.add_argument("--new-cluster-changes", type=int, default=100, help="new-cluster changes")
    p.add_argument(
        "--xds", nargs="+", choices=("sotw", "delta"), default=["sotw", "delta"], help="variants"
    )
    p.add_argument("--gap-ms", type=float, default=60, help="pause after each change")
    p.add_argument("--baseline-s", type=float, default=2.0, help="quiet polling for the baseline")
    p.add_argument("--poll-interval-ms", type=float, default=0, help="0: poll back to back")
    p.add_argument("--concurrency", type=int, default=1, help="Envoy worker threads")
    p.add_argument(
        "--debounce-ms", type=float, default=None, help="ControlPlane debounce (its default)"
    )
    return p


def run(argv: Sequence[str] = ()) -> None:
    asyncio.run(main_async(parser().parse_args(list(argv))))


if __name__ == "__main__":
    run(sys.argv[1:])
