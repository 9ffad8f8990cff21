"""(e) Scale from zero, the activator in path, and a burst to scale, on the local stack.

The whole local stack runs in this process (control plane, real Envoy gateway, activator
process, pods as processes, loopback API), with the seed's hello-world Service.

1. Cold start: a revision at zero pods → first byte of the answer through the gateway,
   over `--wakes` wakes. Baseline: the app's own start (spawn → first HTTP 200) without
   the stack, once just before each wake so both meet the same load on the machine.
   Target: wakegate's overhead (the difference of the p50s) ≤ 100 ms.
   Short windows (stable 6 s, grace 1 s, tick 1 s) bring a revision back to zero
   between wakes; wakes take turns over `--services` identical Services so one wakes
   while the others idle back to zero, and each wake waits until no other pod is
   starting or stopping. The client, and the app in the baseline, are timed from a
   process of their own. Where the time goes comes from hooks on the stack's callbacks
   and the runtime's log.
2. Activator in path vs not: `hey -c 50` (and `-c 1`) through the gateway to one pod in
   proxy mode (target burst capacity 200, the default, keeps the activator in path) and
   one in serve mode (target burst capacity 0: straight to the pod), both pinned to one
   pod, in `--repeat` rounds that alternate the two; medians. Targets: through the
   activator ≥ 60 % of the requests per second straight to the pod, p50 added ≤ 1 ms.
3. Burst: `hey -c 50` at target 10 per pod from one ready pod, default windows (stable
   60 s, panic 6 s, tick 2 s): time until 5 pods are ready. Target ≤ 10 s.
4. Activator throughput with `containerConcurrency: 1` against 0, in the same run: `hey`
   through the gateway to two Services held behind the activator (target burst capacity
   -1) on the same number of pods; the limit sends every request through the gate,
   which holds each pod to one request (see `wakegate.xds.gate`). Baseline: the
   Service without a limit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench import command_line
from bench.dataplane import Load, load, parse_hey
from bench.local import NAMESPACE, Api, Timeline, host, local_stack, manifest, pod_log, service_of
from bench.stack import cpu_seconds, ms, percentile, percentile_ms, table
from bench.timing import Client, start_client
from wakegate.activator.coldstart import parse_cold_starts
from wakegate.autoscaler.config import AutoscalerConfig
from wakegate.autoscaler.decider import Decision
from wakegate.ingress.model import BackendRef
from wakegate.serving.model import SERVICE_PORT
from wakegate.stack import LocalStack

SHORT = AutoscalerConfig(stable_window_s=6.0, scale_to_zero_grace_period_s=1.0, tick_interval_s=1.0)
SETTLE_S = 0.3
"""Pause after the pods went quiet, before a wake."""
POLL_S = 0.1
"""Between counts of the ready pods during the burst."""
APP_POLL_S = 0.001
"""Between requests to the baseline app while it starts."""
TARGET_OVERHEAD_S = 0.100
BURST_PODS = 5
TARGET_BURST_S = 10.0

ANNOTATION = "autoscaling.knative.dev/"
STAGES: tuple[tuple[str, str], ...] = (
    ("poke", "activator poked the control plane"),
    ("decision", "autoscaler asked for a pod"),
    ("reconcile", "reconcile of the Service started"),
    ("spawned", "pod process spawned"),
    ("ready", "pod ready (readiness probe passed)"),
    ("endpoints", "pod endpoint handed to the activator feed"),
)


# --- the stack: hooks and helpers ------------------------------------------------------


def revision(name: str) -> str:
    return f"{name}-00001"


def instrument(stack: LocalStack, timeline: Timeline) -> None:
    """Wrap the stack's poke, decision and endpoint-feed callbacks so each marks
    `timeline`; behaviour is unchanged."""
    serving, autoscaler = stack.serving, stack.autoscaler
    assert serving is not None and serving.activation is not None and autoscaler is not None
    feed = serving.activation.pods_feed
    on_poke, set_endpoints = feed.on_poke, feed.set_endpoints
    on_decision = autoscaler.on_decision

    def poke(namespace: str, revision_name: str) -> None:
        timeline.mark("poke", service_of(revision_name))
        if on_poke is not None:
            on_poke(namespace, revision_name)

    def decided(key: str, decision: Decision) -> None:
        service = service_of(key.partition("/")[2])
        timeline.desired.append((time.monotonic_ns(), service, decision.desired))
        if decision.desired > 0:
            timeline.mark("decision", service)
        on_decision(key, decision)

    def endpoints(
        namespace: str, revision_name: str, eps: Iterable[Any], *a: Any, **kw: Any
    ) -> None:
        listed = list(eps)
        if listed:
            timeline.mark("endpoints", service_of(revision_name))
        set_endpoints(namespace, revision_name, listed, *a, **kw)

    feed.on_poke = poke
    feed.set_endpoints = endpoints  # type: ignore[method-assign]
    autoscaler.on_decision = decided


async def activator_hold(stack: LocalStack, session: aiohttp.ClientSession) -> tuple[float, int]:
    """The activator's total hold seconds and requests held so far."""
    assert stack.activator is not None
    async with session.get(f"http://127.0.0.1:{stack.activator.port}/metrics") as r:
        text = await r.text()
    found = dict(re.findall(r"^wakegate_activator_hold_seconds_(sum|count) (\S+)$", text, re.M))
    return float(found.get("sum", 0)), int(float(found.get("count", 0)))


async def activator_cold_start(
    stack: LocalStack, session: aiohttp.ClientSession, name: str
) -> tuple[int, float | None]:
    """The activator's own cold starts of `name`'s revision so far, and the latest."""
    assert stack.activator is not None
    async with session.get(f"http://127.0.0.1:{stack.activator.port}/metrics") as r:
        figures = parse_cold_starts(await r.text()).get((NAMESPACE, revision(name)))
    return (figures.count, figures.latest_seconds) if figures else (0, None)


def _child_pid(marker: str) -> int | None:
    """A child process of this one whose command line contains `marker`."""
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if int(stat.rpartition(")")[2].split()[1]) == me and marker.encode() in cmdline:
            return int(entry)
    return None


async def wait_until(
    check: Callable[[], Awaitable[bool]], timeout: float, what: str, interval: float = 0.05
) -> None:
    """Call the coroutine function `check` every `interval` until it returns true."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(interval)


# --- 1. cold start ---------------------------------------------------------------------


def _cpu(activator: int | None) -> dict[str, float]:
    """CPU seconds used so far by this process and by the activator."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out = {"stack": usage.ru_utime + usage.ru_stime}
    if activator is not None:
        with contextlib.suppress(OSError):
            out["activator"] = cpu_seconds(activator)
    return out


@contextlib.asynccontextmanager
async def loop_lag(interval_s: float = 0.005) -> AsyncIterator[list[float]]:
    """How late each of this event loop's `interval_s` sleeps woke, while inside."""
    lags: list[float] = []
    loop = asyncio.get_running_loop()

    async def watch() -> None:
        while True:
            start = loop.time()
            await asyncio.sleep(interval_s)
            lags.append(loop.time() - start - interval_s)

    task = asyncio.create_task(watch())
    try:
        yield lags
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@dataclass
class Wake:
    service: str
    first_byte_s: float
    status: int
    stages: dict[str, float | None]
    """Seconds from the request being sent to each of STAGES."""
    hold_s: float | None
    """The activator's hold of the request, by its own metric."""
    metric_s: float | None
    """The activator's `wakegate_cold_start_seconds` for this wake (held → first byte)."""
    pod_start_s: float | None
    """The pod's spawn → ready, as the runtime logged it."""
    overlapped: bool
    """Another Service's scale changed while this request was waiting."""
    cpu_s: dict[str, float]
    """CPU used during the wake by this process (the stack) and the activator."""
    loop_lag_s: float
    """The longest the stack's event loop was late during the wake."""


@dataclass
class ColdResult:
    app_start_s: list[float]
    """The baseline: one app start just before each wake."""
    wakes: list[Wake]
    services: int


async def cold_starts(
    stack: LocalStack,
    api: Api,
    timing: Client,
    timeline: Timeline,
    *,
    wakes: int,
    services: int,
) -> ColdResult:
    app_start = []
    activator = _child_pid("wakegate.activator.main")
    names = [f"cold-{i}" for i in range(1, services + 1)]
    await api.apply(*(manifest(n) for n in names))
    idle_s = SHORT.stable_window_s + SHORT.scale_to_zero_grace_period_s + 30
    results = []
    for i in range(wakes):
        name = names[i % services]

        async def quiet(rev: str = revision(name)) -> bool:
            pods = await api.pods()
            return all(p["ready"] for p in pods) and not any(p["revision"] == rev for p in pods)

        await wait_until(quiet, idle_s, f"{name} at zero pods")
        await asyncio.sleep(SETTLE_S)
        app_start.append(await timing.start_app())
        held, count = await activator_hold(stack, api.session)
        colds, _ = await activator_cold_start(stack, api.session, name)
        cpu = _cpu(activator)
        async with loop_lag() as lags:
            sent, first, status = await timing.get(stack.config.port, host(name))
        cpu_after = _cpu(activator)
        held_after, count_after = await activator_hold(stack, api.session)
        colds_after, latest = await activator_cold_start(stack, api.session, name)
        stages: dict[str, float | None] = {}
        since = sent
        for stage, _ in STAGES:
            at = timeline.first(stage, name, since)
            stages[stage] = None if at is None else (at - sent) / 1e9
            since = at if at is not None else since
        pod_start = next((s for t, n, s in timeline.app_start_s if n == name and t >= sent), None)
        results.append(
            Wake(
                service=name,
                first_byte_s=(first - sent) / 1e9,
                status=status,
                stages=stages,
                hold_s=held_after - held if count_after == count + 1 else None,
                metric_s=latest if colds_after == colds + 1 else None,
                pod_start_s=pod_start,
                overlapped=any(n != name and sent <= t <= first for t, n, _ in timeline.desired),
                cpu_s={k: cpu_after[k] - v for k, v in cpu.items()},
                loop_lag_s=max(lags, default=0.0),
            )
        )
    for name in names:
        await api.delete(name)
    return ColdResult(app_start, results, services)


def report_cold(r: ColdResult) -> None:
    first = [w.first_byte_s for w in r.wakes if w.status == 200]
    failed = [w for w in r.wakes if w.status != 200]
    base = r.app_start_s
    paired = [w.first_byte_s - b for w, b in zip(r.wakes, base, strict=True) if w.status == 200]
    overhead = percentile(first, 50) - percentile(base, 50) if first and base else None
    verdict = ""
    if overhead is not None:
        verdict = "met" if overhead <= TARGET_OVERHEAD_S else "MISSED"
    own = [
        w.first_byte_s - w.pod_start_s
        for w in r.wakes
        if w.status == 200 and w.pod_start_s is not None
    ]
    ratio = f"{percentile(first, 50) / percentile(base, 50):.2f}x" if first and base else ""
    metric = [w.metric_s for w in r.wakes if w.status == 200 and w.metric_s is not None]

    def row(label: str, values: Sequence[float], versus: str = "") -> list[object]:
        return [label, len(values), *(percentile_ms(values, p) for p in (50, 95, 100)), versus, ""]

    rows: list[list[object]] = [
        row("app alone: spawn → first 200 (baseline)", base, "1.00x"),
        row("zero pods → first byte via the gateway", first, ratio),
        ["wakegate overhead: difference of the p50s", "", "-" if overhead is None else ms(overhead),
         "", "", "", f"≤ {TARGET_OVERHEAD_S * 1000:.0f} {verdict}"],
        row("each wake minus the app start just before it", paired),
        row("each wake minus its pod's own spawn → ready", own),
        row("the activator's wakegate_cold_start_seconds", metric),
    ]  # fmt: skip
    print(table(["ms", "n", "p50", "p95", "max", "vs base", "target"], rows))
    if failed:
        print(f"{len(failed)} wakes did not answer 200: {[w.status for w in failed]}")

    rows = []
    previous: list[float] = [0.0] * len(r.wakes)
    for stage, label in STAGES:
        at = [w.stages[stage] for w in r.wakes]
        seen = [a for a in at if a is not None]
        steps = [a - b for a, b in zip(at, previous, strict=True) if a is not None]
        previous = [a if a is not None else b for a, b in zip(at, previous, strict=True)]
        rows.append(
            [
                label,
                percentile_ms(seen, 50),
                percentile_ms(seen, 95),
                percentile_ms(steps, 50),
                len(seen),
            ]
        )
    steps = [w.first_byte_s - b for w, b in zip(r.wakes, previous, strict=True)]
    rows.append(
        [
            "first byte at the client",
            percentile_ms(first, 50),
            percentile_ms(first, 95),
            percentile_ms(steps, 50),
            "",
        ]
    )
    print()
    print(
        table(["where the time goes (ms after the request)", "p50", "p95", "step p50", "n"], rows)
    )
    pod_start = [w.pod_start_s for w in r.wakes if w.pod_start_s is not None]
    hold = [w.hold_s for w in r.wakes if w.hold_s is not None]
    overlapped = sum(w.overlapped for w in r.wakes)
    lag = [w.loop_lag_s for w in r.wakes]
    cpu = {k: sum(w.cpu_s.get(k, 0.0) for w in r.wakes) / len(r.wakes) for k in r.wakes[0].cpu_s}
    print(
        f"pod spawn → ready in the stack p50 {percentile_ms(pod_start, 50)} ms (app alone "
        f"{percentile_ms(base, 50)} ms); activator hold p50 {percentile_ms(hold, 50)} ms; "
        "CPU per wake "
        + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in cpu.items())
        + f"; the stack's event loop late by up to {percentile_ms(lag, 50)} ms (p50 of each wake's "
        f"worst; p95 {percentile_ms(lag, 95)}). {len(r.wakes)} wakes "
        f"({overlapped} overlapped by another Service's scale change) "
        f"taking turns over {r.services} Services, windows stable "
        f"{SHORT.stable_window_s:g} s, grace {SHORT.scale_to_zero_grace_period_s:g} s, tick "
        f"{SHORT.tick_interval_s:g} s; each wake starts once its revision has no pod and no "
        "other pod is starting or stopping. The stages are each the first such event after "
        "the one above; 'step' is the time since the stage above."
    )


# --- 2. activator in path vs straight to the pod --------------------------------------------


PATHS: tuple[tuple[str, str, dict[str, str]], ...] = (
    ("via-activator", "activator (proxy mode)", {}),
    ("direct", "pod (serve mode)", {f"{ANNOTATION}target-burst-capacity": "0"}),
)


@dataclass
class PathResult:
    runs: list[Load]
    routed: dict[str, str]
    """Service → where its gateway cluster pointed before and after each run."""


def _backend(stack: LocalStack, name: str) -> str:
    backend = stack.cp.state().backends.get(BackendRef(NAMESPACE, revision(name), SERVICE_PORT).key)
    assert stack.activator is not None
    if backend is None or not backend.endpoints:
        return "nothing"
    if all(e.port == stack.activator.port for e in backend.endpoints):
        return "activator"
    return f"{len(backend.endpoints)} pod(s)"


async def activator_vs_direct(
    stack: LocalStack,
    api: Api,
    *,
    seconds: float,
    connections: int,
    warmup: float,
    repeat: int,
) -> PathResult:
    """`repeat` rounds, each a run through the activator then one straight to the pod, at
    `connections` and then at one connection: the two paths take turns, so both meet
    the same load on the machine."""
    pinned = {f"{ANNOTATION}min-scale": "1", f"{ANNOTATION}max-scale": "1"}
    await api.apply(*(manifest(name, {**pinned, **extra}) for name, _, extra in PATHS))

    async def settled() -> bool:
        return _backend(stack, "via-activator") == "activator" and _backend(
            stack, "direct"
        ).endswith("pod(s)")

    await wait_until(settled, 20, "the proxy and serve modes")
    assert stack.gateway is not None and stack.gateway.pid is not None
    activator = _child_pid("wakegate.activator.main")
    url = f"http://127.0.0.1:{stack.config.port}/"
    runs = []
    routed: dict[str, set[str]] = {}
    for _ in range(repeat):
        for conns in dict.fromkeys((connections, 1)):
            for name, label, _ in PATHS:
                [pod] = await api.ready(revision(name))
                pids = {"app": int(pod["pid"]), "envoy": stack.gateway.pid, "wakegate": os.getpid()}
                if activator is not None:
                    pids["activator"] = activator
                routed.setdefault(name, set()).add(_backend(stack, name))
                runs.append(
                    await load(
                        "hey",
                        label,
                        url,
                        host(name),
                        duration=seconds,
                        connections=conns,
                        warmup=warmup,
                        pids=pids,
                    )
                )
                routed[name].add(_backend(stack, name))
    for name, _, _ in PATHS:
        await api.delete(name)
    return PathResult(runs, {n: " and ".join(sorted(v)) for n, v in routed.items()})


def _median_run(runs: Sequence[Load]) -> Load:
    """The runs' medians: req/s, latencies and CPU shares each on its own; ok and failed
    summed."""

    def mid(values: Sequence[float]) -> float:
        return percentile(values, 50)

    first = runs[0]
    cpu = {k: mid([r.cpu.get(k, 0.0) for r in runs]) for k in first.cpu}
    return Load(
        first.tool,
        first.connections,
        first.path,
        mid([r.rps for r in runs]),
        mid([r.p50_s for r in runs]),
        mid([r.p99_s for r in runs]),
        sum(r.ok for r in runs),
        sum(r.failed for r in runs),
        cpu,
    )


def report_paths(r: PathResult) -> None:
    groups: dict[tuple[int, str], list[Load]] = {}
    for run in r.runs:
        groups.setdefault((run.connections, run.path), []).append(run)
    rounds = len(next(iter(groups.values())))
    medians = {key: _median_run(runs) for key, runs in groups.items()}
    direct = {c: run for (c, path), run in medians.items() if path == PATHS[1][1]}
    rows = []
    for (conns, _), run in medians.items():
        base = direct[conns]
        same = [g for g in groups[(conns, run.path)]]
        if run is base:
            versus = "baseline"
        elif conns == 1:
            versus = f"p50 +{(run.p50_s - base.p50_s) * 1000:.2f} ms"
        else:
            versus = f"{run.rps / base.rps * 100:.0f}% req/s"
        rows.append(
            [
                f"hey -c {conns}",
                run.path,
                f"{run.rps:,.0f}",
                " ".join(f"{g.rps / 1000:.1f}k" for g in same),
                f"{run.p50_s * 1000:.2f}",
                f"{run.p99_s * 1000:.2f}",
                f"{run.ok:,}",
                f"{run.failed:,}",
                versus,
                " ".join(f"{name} {share * 100:.0f}%" for name, share in run.cpu.items()),
            ]
        )
    header = ["load", "gateway →", "req/s", "each run", "p50 ms", "p99 ms", "ok", "failed"]
    print(table([*header, "vs direct", "CPU (100% = one core)"], rows, left=2))
    ratios = [
        a.rps / b.rps
        for a, b in zip(
            groups[(r.runs[0].connections, PATHS[0][1])],
            groups[(r.runs[0].connections, PATHS[1][1])],
            strict=True,
        )
    ]
    print(
        f"medians of {rounds} rounds (each: activator then direct, -c {r.runs[0].connections} "
        f"then -c 1); through the activator in each round: "
        + ", ".join(f"{x * 100:.0f}%" for x in ratios)
        + " of the direct run next to it."
    )
    routed = ", ".join(f"{name}: {where}" for name, where in r.routed.items())
    print(
        "Same app, one pod each (min-scale = max-scale = 1), same gateway; the activator "
        "is a Python process (uvloop, httptools). The gateway's cluster pointed at this "
        f"before and after each run: {routed}. {os.cpu_count()} cores shared by hey, Envoy, "
        "the activator, the app and this process."
    )


# --- 4. the activator with containerConcurrency 1 vs 0 ---------------------------------------


LIMITS: tuple[tuple[str, str, int], ...] = (
    ("unlimited", "containerConcurrency 0", 0),
    ("limited", "containerConcurrency 1", 1),
)


async def activator_limits(
    stack: LocalStack, api: Api, *, seconds: float, connections: int, pods: int, warmup: float
) -> PathResult:
    held = {
        f"{ANNOTATION}min-scale": str(pods),
        f"{ANNOTATION}max-scale": str(pods),
        f"{ANNOTATION}target-burst-capacity": "-1",
    }
    docs = []
    for name, _, limit in LIMITS:
        doc = manifest(name, held)
        doc["spec"]["template"]["spec"]["containerConcurrency"] = limit
        docs.append(doc)
    await api.apply(*docs)

    async def settled() -> bool:
        counts = [len(await api.ready(revision(name))) for name, _, _ in LIMITS]
        routed = [_backend(stack, name) for name, _, _ in LIMITS]
        return counts == [pods] * len(LIMITS) and routed == ["activator"] * len(LIMITS)

    await wait_until(settled, 30, f"{pods} pods behind the activator for each Service")
    assert stack.gateway is not None and stack.gateway.pid is not None
    activator = _child_pid("wakegate.activator.main")
    url = f"http://127.0.0.1:{stack.config.port}/"
    runs = []
    routed: dict[str, set[str]] = {}
    for name, label, _ in LIMITS:
        pids = {"envoy": stack.gateway.pid, "wakegate": os.getpid()}
        if activator is not None:
            pids["activator"] = activator
        routed.setdefault(name, set()).add(_backend(stack, name))
        runs.append(
            await load(
                "hey",
                label,
                url,
                host(name),
                duration=seconds,
                connections=connections,
                warmup=warmup,
                pids=pids,
            )
        )
        routed[name].add(_backend(stack, name))
    for name, _, _ in LIMITS:
        await api.delete(name)
    return PathResult(runs, {n: " and ".join(sorted(v)) for n, v in routed.items()})


def report_limits(r: PathResult, pods: int) -> None:
    base = next(run for run in r.runs if run.path == LIMITS[0][1])
    rows = []
    for run in r.runs:
        versus = "baseline" if run is base else f"{run.rps / base.rps:.2f}x req/s"
        rows.append(
            [
                run.path,
                f"{run.rps:,.0f}",
                f"{run.p50_s * 1000:.2f}",
                f"{run.p99_s * 1000:.2f}",
                f"{run.ok:,}",
                f"{run.failed:,}",
                versus,
                " ".join(f"{name} {share * 100:.0f}%" for name, share in run.cpu.items()),
            ]
        )
    header = ["through the activator", "req/s", "p50 ms", "p99 ms", "ok", "failed", "vs cc 0"]
    print(table([*header, "CPU (100% = one core)"], rows, left=1))
    routed = ", ".join(f"{name}: {where}" for name, where in r.routed.items())
    print(
        f"hey -c {r.runs[0].connections} to the hello-world app on {pods} pods per Service "
        "(min-scale = max-scale), both held behind the activator (target burst capacity "
        f"-1): the gateway's cluster pointed at {routed} before and after each run. With "
        f"the limit at most {pods} requests reach the pods at once, each through the gate; "
        f"the others wait in the activator. {os.cpu_count()} cores shared by hey, Envoy, the "
        "activator, the apps and this process."
    )


# --- 3. burst to scale ----------------------------------------------------------------------


@dataclass
class BurstResult:
    seconds: float
    asked_s: float | None
    """Load start → the autoscaler first asked for BURST_PODS or more."""
    reached_s: float | None
    """Load start → BURST_PODS pods ready."""
    first_at: dict[int, float]
    """Ready pod count → when it was first seen."""
    asked: list[tuple[float, int]]
    """When the autoscaler's decision changed, and to what."""
    most: int
    hey: tuple[float, float, float, int, int]
    pod_start_s: list[float]


async def burst(
    stack: LocalStack, api: Api, timeline: Timeline, *, seconds: float, connections: int
) -> BurstResult:
    name = "helloworld-go"
    await api.apply(manifest(name))

    async def one_ready() -> bool:
        return len(await api.ready(revision(name))) == 1

    await wait_until(one_ready, 30, "one ready pod")
    await asyncio.sleep(1.0)
    start = time.monotonic_ns()
    proc = await asyncio.create_subprocess_exec(
        "hey", "-z", f"{seconds:g}s", "-c", str(connections), "-host", host(name),
        f"http://127.0.0.1:{stack.config.port}/",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output = asyncio.create_task(proc.communicate())
    first_at: dict[int, float] = {}
    while not output.done():
        count = len(await api.ready(revision(name)))
        first_at.setdefault(count, (time.monotonic_ns() - start) / 1e9)
        await asyncio.wait({output}, timeout=POLL_S)
    out, _ = await output
    decisions = [((t - start) / 1e9, d) for t, n, d in timeline.desired if n == name and t >= start]
    asked = next((t for t, d in decisions if d >= BURST_PODS), None)
    reached = min((t for n, t in first_at.items() if n >= BURST_PODS), default=None)
    starts = [s for t, n, s in timeline.app_start_s if n == name and t >= start]
    return BurstResult(
        seconds=seconds,
        asked_s=asked,
        reached_s=reached,
        first_at=first_at,
        asked=decisions,
        most=max(first_at),
        hey=parse_hey(out.decode(errors="replace")),
        pod_start_s=starts,
    )


def report_burst(r: BurstResult, connections: int) -> None:
    rps, p50, p99, ok, failed = r.hey

    def s(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    verdict = "MISSED" if r.reached_s is None or r.reached_s > TARGET_BURST_S else "met"
    rows = [
        [f"autoscaler asks for ≥ {BURST_PODS} pods", s(r.asked_s), ""],
        [f"{BURST_PODS} pods ready", s(r.reached_s), f"≤ {TARGET_BURST_S:g} {verdict}"],
        ["pod spawn → ready under this load, p50",
         s(percentile(r.pod_start_s, 50) if r.pod_start_s else None), ""],
    ]  # fmt: skip
    print(table(["seconds after the load started", "s", "target"], rows))
    steps = ", ".join(f"{n} at {t:.1f} s" for n, t in sorted(r.first_at.items()))
    asked = ", ".join(f"{n} at {t:.1f} s" for t, n in r.asked)
    print(
        f"autoscaler asked for: {asked}; ready pods first seen: {steps}; most pods ready "
        f"{r.most}. hey -c {connections} "
        f"-z {r.seconds:g}s: {ok:,} answered 200, {failed:,} other answers or errors, "
        f"{rps:,.0f} req/s, p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms. Target 10 per "
        "pod, default windows (stable 60 s, panic 6 s, tick 2 s); pods polled every "
        f"{POLL_S * 1000:.0f} ms through the API."
    )


# --- main ------------------------------------------------------------------------------------


async def main_async(args: argparse.Namespace) -> None:
    if not shutil.which("hey") and {"path", "burst", "cc"} & set(args.parts):
        print("hey is not installed (apt-get install hey): skipping parts path, burst and cc")
        args.parts = [p for p in args.parts if p == "cold"]
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="wakegate-bench-") as tmp:
        if {"cold", "path", "cc"} & set(args.parts):
            timeline = Timeline()
            with pod_log(timeline):
                async with (
                    local_stack(
                        Path(tmp) / "short", timeline, autoscaler=SHORT, instrument=instrument
                    ) as (stack, api),
                    start_client(APP_POLL_S) as timing,
                ):
                    if "cold" in args.parts:
                        print(
                            f"== (e.1) cold start: zero pods → first byte through the gateway "
                            f"({args.wakes} wakes over {args.services} Services) =="
                        )
                        cold = await cold_starts(
                            stack,
                            api,
                            timing,
                            timeline,
                            wakes=args.wakes,
                            services=args.services,
                        )
                        report_cold(cold)
                    if "path" in args.parts:
                        print(
                            f"\n== (e.2) activator in path vs straight to the pod "
                            f"(hey, {args.seconds:g} s per run) =="
                        )
                        paths = await activator_vs_direct(
                            stack,
                            api,
                            seconds=args.seconds,
                            connections=args.connections,
                            warmup=1.0,
                            repeat=args.repeat,
                        )
                        report_paths(paths)
                    if "cc" in args.parts:
                        print(
                            f"\n== (e.4) the activator with containerConcurrency 1 vs 0 "
                            f"(hey -c {args.connections}, {args.seconds:g} s per run) =="
                        )
                        limits = await activator_limits(
                            stack,
                            api,
                            seconds=args.seconds,
                            connections=args.connections,
                            pods=args.cc_pods,
                            warmup=1.0,
                        )
                        report_limits(limits, args.cc_pods)
        if "burst" in args.parts:
            print(
                f"\n== (e.3) burst: hey -c {args.burst_connections} from one pod until "
                f"{BURST_PODS} are ready, default windows =="
            )
            timeline = Timeline()
            with pod_log(timeline):
                async with local_stack(
                    Path(tmp) / "default",
                    timeline,
                    autoscaler=AutoscalerConfig(),
                    instrument=instrument,
                ) as (stack, api):
                    result = await burst(
                        stack,
                        api,
                        timeline,
                        seconds=args.burst_seconds,
                        connections=args.burst_connections,
                    )
            report_burst(result, args.burst_connections)
    print(
        f"machine load average (1 min) {load_before:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end, on {os.cpu_count()} cores"
    )


def parser() -> argparse.ArgumentParser:
    p = command_line("coldstart", __doc__)
    p.add_argument("--wakes", type=int, default=20, help="cold starts (and baseline app starts)")
    p.add_argument("--services", type=int, default=4, help="Services the wakes take turns over")
    p.add_argument("--seconds", type=float, default=10.0, help="seconds per hey run in part 2")
    p.add_argument("--connections", type=int, default=50, help="hey -c in part 2 (and -c 1)")
    p.add_argument("--repeat", type=int, default=3, help="rounds of part 2 (medians are reported)")
    p.add_argument("--burst-seconds", type=float, default=20.0, help="hey -z in part 3")
    p.add_argument("--burst-connections", type=int, default=50, help="hey -c in part 3")
    p.add_argument("--cc-pods", type=int, default=4, help="pods per Service in part 4")
    p.add_argument(
        "--parts",
        nargs="+",
        choices=("cold", "path", "burst", "cc"),
        default=["cold", "path", "burst", "cc"],
        help="which parts to run",
    )
    return p


def run(argv: Sequence[str] = ()) -> None:
    asyncio.run(main_async(parser().parse_args(list(argv))))


if __name__ == "__main__":
    run(sys.argv[1:])
