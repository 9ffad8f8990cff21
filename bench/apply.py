"""(f) Apply → first answer: a new Service's PUT to its first HTTP 200 through the gateway;
(f.2) 1,000 Services applied at once → all served (`bench/apply_bulk.py`).

`--parts first bulk` chooses; (f.2)'s own description is in `bench.apply_bulk`.

The whole local stack runs in this process (control plane, real Envoy gateway, activator
process, pods as processes, loopback API). A timing client in a process of its own sends
`PUT /v1/manifests` of a new hello-world Service (examples/helloworld, `dir` set to it)
and, from the moment it is sent, polls the gateway with the Service's Host header every
`--poll-ms`: the figure is PUT sent → first 200. The PUT goes without `wait`, so the
API's wait hides nothing; every other new Service is applied with `?wait=1` instead
(polled the same way) to show when the API's wait returns against the first 200. Each
new Service is deleted once measured, so every apply meets the same stack.

1. On an empty stack.
2. With `--background` Services already applied and at zero pods (routes loaded, the
   activator in path), put in a few large multi-document PUTs: annotated
   `autoscaling.knative.dev/initial-scale: "0"`, which the stack accepts as it runs
   with allow-zero-initial-scale, so they are Ready without ever starting a pod. Should
   the stack refuse that, they are applied as they are and left to idle to zero with
   short windows (stable 6 s, grace 1 s) — the short windows apply to the whole run.

Baseline, same run: the app's own spawn → first 200, polled the same way, so wakegate's
overhead = apply → first 200 - app start. No target is set for this figure. Where the
time goes comes from hooks on the stack's callbacks and the runtime's log: API stored it,
reconcile started, pod spawned, pod ready, endpoints handed to the control plane,
reconcile after ready, route handed to it, snapshot published, gateway ACKed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench import command_line
from bench.apply_bulk import bulk, report_bulk
from bench.local import Api, Timeline, host, local_stack, manifest, pod_log, service_of
from bench.stack import ms, percentile, percentile_ms, table
from bench.timing import Client, start_client
from wakegate.autoscaler.config import AutoscalerConfig
from wakegate.ingress.model import Backend, Ingress
from wakegate.stack import LocalStack

ZERO_SCALE = {"autoscaling.knative.dev/initial-scale": "0"}
SHORT = AutoscalerConfig(stable_window_s=6.0, scale_to_zero_grace_period_s=1.0)
CHECK_S = 2.0
"""Between checks of the background Services while they load."""

STAGES: tuple[tuple[str, str, str], ...] = (
    ("stored", "stored", "API stored the Service and its Revision"),
    ("reconcile", "reconcile", "reconcile started (wait in the reconcile queue)"),
    ("spawned", "spawned", "pod process spawned"),
    ("ready", "ready", "pod ready (readiness probe passed)"),
    ("endpoints", "backend", "revision's endpoints handed to the control plane"),
    ("re-reconcile", "reconcile", "reconcile after ready started (queue again)"),
    ("routed", "routed", "route handed to the control plane"),
    ("published", "published", "snapshot with the route published"),
    ("acked", "acked", "gateway ACKed that snapshot"),
)
"""(row, event, meaning): each row is the first `event` after the row before it."""


# --- hooks on the stack ----------------------------------------------------------------


def instrument(stack: LocalStack, timeline: Timeline) -> None:
    """Wrap the API's store and the control plane's `apply_ingress` and `set_backend` so
    each marks `timeline`; behaviour is unchanged."""
    serving, cp = stack.serving, stack.cp
    assert serving is not None
    store = serving.apply
    apply_ingress, set_backend = cp.apply_ingress, cp.set_backend
    watchers: set[asyncio.Task[None]] = set()

    def stored(text: str, base_dir: Any, *rest: Any) -> Any:
        applied = store(text, base_dir, *rest)
        for item in applied:
            timeline.mark("stored", item.service.name)
        return applied

    async def served(name: str) -> None:
        version = await cp.flush()
        timeline.mark("published", name)
        if await cp.server.wait_acked(cp.group, version, 60):
            timeline.mark("acked", name)

    def routed(ingress: Ingress) -> None:
        name = ingress.key.partition("/")[2]
        first = ("routed", name) not in timeline.events
        timeline.mark("routed", name)
        apply_ingress(ingress)
        if first:
            task = asyncio.get_running_loop().create_task(served(name))
            watchers.add(task)
            task.add_done_callback(watchers.discard)

    def backend(key: str, value: Backend) -> None:
        revision_name = key.partition("/")[2].rpartition(":")[0]
        timeline.mark("backend", service_of(revision_name))
        set_backend(key, value)

    serving.apply = stored  # type: ignore[method-assign]
    cp.apply_ingress = routed  # type: ignore[method-assign]
    cp.set_backend = backend  # type: ignore[method-assign]


# --- measuring new Services ------------------------------------------------------------


@dataclass
class Run:
    service: str
    wait: bool
    first_ok_s: float | None
    """PUT sent → first 200 through the gateway; None: not within the timeout."""
    reply_s: float
    """PUT sent → the API's reply (with `wait=1`: when it says the gateway serves it)."""
    missed_s: float | None
    """PUT sent → the last request that did not get a 200 was sent."""
    status: int
    seen: str
    stages: dict[str, float | None]
    """Seconds from the PUT being sent to each of STAGES."""


@dataclass
class Scenario:
    label: str
    background: int
    runs: list[Run] = field(default_factory=list)
    stopped: str = ""
    reconciles: tuple[int, float] = (0, 0.0)
    seconds: float = 0.0
    loaded: Loaded | None = None
    """How its background got there."""


async def measure(
    stack: LocalStack,
    api: Api,
    timing: Client,
    timeline: Timeline,
    scenario: Scenario,
    *,
    services: int,
    waited: int,
    timeout: float,
    max_timeouts: int,
    work_dir: Path,
) -> None:
    """Apply `services` new Services without wait and `waited` with it, alternating,
    each polled through the gateway and deleted afterwards."""
    plan = [("apply", i, False) for i in range(services)]
    for i in range(waited):
        plan.insert(min(2 * i + 1, len(plan)), ("waited", i, True))
    tag = f"b{scenario.background}"
    started = time.monotonic_ns()
    timeouts = 0
    for prefix, i, wait in plan:
        name = f"{prefix}-{tag}-{i + 1}"
        body = work_dir / f"{name}.yaml"
        body.write_text(yaml.safe_dump(manifest(name)))
        got = await timing.apply(stack, host(name), body, wait=wait, timeout=timeout)
        stages: dict[str, float | None] = {}
        since: int | None = got.sent
        for row, event, _ in STAGES:
            at = timeline.first(event, name, since) if since is not None else None
            stages[row] = None if at is None else (at - got.sent) / 1e9
            since = at
        scenario.runs.append(
            Run(
                service=name,
                wait=wait,
                first_ok_s=(got.first_ok - got.sent) / 1e9 if got.first_ok else None,
                reply_s=(got.replied - got.sent) / 1e9,
                missed_s=(got.missed - got.sent) / 1e9 if got.missed else None,
                status=got.status,
                seen=got.seen,
                stages=stages,
            )
        )
        await api.delete(name, missing_ok=True)
        if not got.first_ok:
            timeouts += 1
            if timeouts >= max_timeouts:
                left = len(plan) - len(scenario.runs)
                scenario.stopped = (
                    f"stopped after {timeouts} applies got no 200 within {timeout:g}s "
                    f"({left} not measured)"
                )
                break
    until = time.monotonic_ns()
    scenario.reconciles = timeline.reconcile_cost(started, until)
    scenario.seconds = (until - started) / 1e9


# --- the background Services -----------------------------------------------------------


@dataclass
class Loaded:
    wanted: int
    applied: int
    """Background Services applied by the end; short of `wanted` when the pod cap held
    PUTs back until the deadline."""
    mode: str
    note: str = ""
    puts: list[float] = field(default_factory=list)
    """Seconds the API took for each PUT."""
    routed_s: float | None = None
    """First PUT → every background revision routed."""
    zero_s: float | None = None
    """First PUT → every background revision routed, at zero pods, the activator in path."""
    last: Counter[str] = field(default_factory=Counter)
    most_pods: int = 0
    reconciles: tuple[int, float] = (0, 0.0)
    seconds: float = 0.0


def _settled(revision: dict[str, Any]) -> bool:
    """Routed, at zero pods, with the activator in path."""
    proxied = (revision.get("autoscaler") or {}).get("mode") == "proxy"
    return bool(revision["ready"] and revision["routed"] and proxied) and revision["pods"] == 0


async def load_background(
    stack: LocalStack,
    api: Api,
    timeline: Timeline,
    have: int,
    count: int,
    *,
    batch: int,
    max_pods: int,
    timeout: float,
) -> Loaded:
    """Add background Services to the `have` there are, up to `count`, in PUTs of `batch`,
    and wait until all are routed and at zero pods, or `timeout` seconds passed."""
    names = [f"bg-{i:04d}" for i in range(have + 1, count + 1)]
    t0 = time.monotonic()
    started = time.monotonic_ns()
    status, reply, took = await api.put([manifest(names[0], ZERO_SCALE)])
    if status == 200:
        loaded = Loaded(count, have + 1, "initial-scale 0")
        annotations: dict[str, str] | None = ZERO_SCALE
        loaded.puts.append(took)
        names = names[1:]
    else:
        loaded = Loaded(count, have, "idled to zero (stable 6 s, grace 1 s)")
        loaded.note = f'initial-scale "0" refused: {status} {reply.get("error", reply)}'
        annotations = None
    pending = [names[i : i + batch] for i in range(0, len(names), batch)]
    deadline = t0 + timeout
    while True:
        revisions = await api.revisions()
        ours = [r for r in revisions if r["service"].startswith("bg-")]
        settled = sum(1 for r in ours if _settled(r))
        pods = sum(r["pods"] for r in revisions)
        loaded.most_pods = max(loaded.most_pods, pods)
        if pending and (annotations is not None or loaded.applied - settled < max_pods):
            docs = [manifest(n, annotations) for n in pending.pop(0)]
            status, reply, took = await api.put(docs)
            if status != 200:
                raise RuntimeError(f"background apply failed: {status} {reply}")
            loaded.puts.append(took)
            loaded.applied += len(docs)
            if annotations is not None:
                continue
        loaded.last = Counter(
            "at zero" if _settled(r) else "routed, pods up" if r["routed"] else "not routed"
            for r in ours
        )
        loaded.last["pods running"] = pods
        if not pending and len(ours) == loaded.applied:
            if loaded.routed_s is None and all(r["routed"] for r in ours):
                loaded.routed_s = time.monotonic() - t0
            if settled == loaded.applied and await stack.cp.wait_served(timeout=30):
                loaded.zero_s = time.monotonic() - t0
                break
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(CHECK_S)
    until = time.monotonic_ns()
    loaded.reconciles = timeline.reconcile_cost(started, until)
    loaded.seconds = (until - started) / 1e9
    return loaded


# --- report ----------------------------------------------------------------------------


def _spread(values: Sequence[float]) -> list[str]:
    """p50, p95 and max, in ms."""
    return [percentile_ms(values, p) for p in (50, 95, 100)]


def report(app_start: list[float], scenarios: list[Scenario], poll_ms: float) -> None:
    base = percentile(app_start, 50)
    start = ["app start (spawn → first 200)", "", len(app_start), *_spread(app_start), "", "1.0x"]
    rows: list[list[object]] = [start]
    for s in scenarios:
        for wait in (False, True):
            runs = [r for r in s.runs if r.wait == wait]
            if not runs:
                continue
            ok = [r.first_ok_s for r in runs if r.first_ok_s is not None]
            what = "PUT ?wait=1 → first 200" if wait else "apply (PUT) → first 200"
            late = len(runs) - len(ok)
            rows.append(
                [
                    what,
                    s.label,
                    f"{len(ok)}" + (f" (+{late} none)" if late else ""),
                    *_spread(ok),
                    f"+{ms(percentile(ok, 50) - base)}" if ok else "-",
                    f"{percentile(ok, 50) / base:.1f}x" if ok else "-",
                ]
            )
            replies = [r.reply_s for r in runs]
            name = "PUT ?wait=1 → API returns" if wait else "PUT → API returns"
            rows.append(["  " + name, s.label, len(replies), *_spread(replies), "", ""])
    header = ["figure", "stack", "n", "p50 ms", "p95 ms", "max ms", "overhead p50", "vs app"]
    print(table(header, rows, left=2))
    print(
        "overhead = p50 - app start p50 (wakegate's share of an apply); no target is set for "
        "it. 'none': no 200 within the per-apply timeout."
    )
    for s in scenarios:
        waited = [r for r in s.runs if r.wait and r.first_ok_s is not None and r.status == 200]
        if waited:
            gap = [r.reply_s - (r.first_ok_s or 0) for r in waited]
            early = [r for r in waited if r.missed_s is not None and r.reply_s < r.missed_s]
            print(
                f"{s.label}: ?wait=1 returned {percentile(gap, 50) * 1000:+.1f} ms from the "
                f"first 200 (p50; polls {poll_ms:g} ms apart); a request sent after it returned "
                f"still got no 200 in {len(early)} of {len(waited)}."
            )
        bad = [r for r in s.runs if r.status != 200]
        if bad:
            print(f"{s.label}: API answered {', '.join(f'{r.service} {r.status}' for r in bad)}")
        for r in s.runs:
            if r.first_ok_s is None:
                print(f"{s.label}: {r.service} got no 200; the gateway answered {r.seen}")

    print(
        "\nwhere the time goes, applies without wait: p50 ms from the PUT being sent ('at') and "
        "of each step alone. Stages are marked on the stack's event loop, so they lag when it "
        "is busy; the first 200 is the client's."
    )
    rows = []
    previous: str | None = None
    for row, _, meaning in (*STAGES, ("first 200", "", "first 200 at the client")):
        cells: list[object] = [row, meaning]
        for s in scenarios:
            runs = [r for r in s.runs if not r.wait]
            got = [a for r in runs if (a := _stage(r, row)) is not None]
            steps = [
                a - b
                for r in runs
                if (a := _stage(r, row)) is not None
                and (b := 0.0 if previous is None else _stage(r, previous)) is not None
            ]
            cells += [percentile_ms(got, 50), percentile_ms(steps, 50), f"{len(got)}/{len(runs)}"]
        rows.append(cells)
        previous = row
    header = ["stage", "meaning"]
    for s in scenarios:
        header += [f"{s.label}: at", "step", "seen"]
    print(table(header, rows, left=2))

    print(
        "\nreconcile batches (the Services queued when the worker gets to them are reconciled "
        "together, with one wait for the gateway)"
    )
    rows = []
    for s in scenarios:
        if s.loaded is not None:
            n, mean = s.loaded.reconciles
            rate = f"{n / s.loaded.seconds:.1f}"
            rows.append([f"loading to {s.loaded.wanted:,} bg", n, rate, ms(mean)])
        n, mean = s.reconciles
        rate = f"{n / s.seconds:.1f}" if s.seconds else "-"
        rows.append([f"measuring, {s.label}", n, rate, ms(mean)])
    print(table(["while", "batches", "per s", "mean ms"], rows))
    for s in scenarios:
        if s.stopped:
            print(f"{s.label}: {s.stopped}")
    if any(s.loaded is not None and s.loaded.zero_s is None for s in scenarios):
        print("*: the background had not settled at zero when measured (see above)")


def _stage(run: Run, row: str) -> float | None:
    return run.first_ok_s if row == "first 200" else run.stages.get(row)


def report_loaded(loaded: Loaded, max_pods: int) -> None:
    puts = ", ".join(f"{t:.2f}" for t in loaded.puts)
    print(f"background: {loaded.applied:,} of {loaded.wanted:,} Services applied, {loaded.mode}")
    if loaded.note:
        print(f"  {loaded.note}")
    print(f"  {len(loaded.puts)} PUT(s); seconds the API took for each: {puts}")
    if loaded.applied < loaded.wanted:
        print(
            f"  {loaded.wanted - loaded.applied:,} never applied: {max_pods} applied Services "
            "were still not at zero when the time was up (--max-pods, --load-timeout)"
        )
    routed = "-" if loaded.routed_s is None else f"{loaded.routed_s:.1f} s"
    zero = "-" if loaded.zero_s is None else f"{loaded.zero_s:.1f} s"
    print(f"  all routed after {routed}; all routed, at zero and activator in path after {zero}")
    if loaded.zero_s is None:
        state = ", ".join(f"{k} {v:,}" for k, v in loaded.last.items())
        print(f"  NOT SETTLED after {loaded.seconds:.0f} s: {state}; measured as it stood (*)")
    print(f"  most pods running at once: {loaded.most_pods:,}")


async def main_async(args: argparse.Namespace) -> None:
    if "first" in args.parts:
        await first_answer(args)
    if "bulk" in args.parts and args.bulk > 0:
        print(
            f"\n== (f.2) {args.bulk:,} Services applied at once → all served, as one file "
            f"and as {args.bulk:,} applies; baseline {args.bulk_baseline} Services =="
        )
        with tempfile.TemporaryDirectory(prefix="wakegate-bench-bulk-") as tmp:
            async with start_client(args.poll_ms / 1000) as timing:
                results = [
                    await bulk(
                        Path(tmp),
                        timing,
                        way,
                        count=args.bulk,
                        baseline=args.bulk_baseline,
                        clients=args.clients,
                        autoscaler=SHORT,
                    )
                    for way in ("one file", "separate", "one by one")
                ]
        report_bulk(results, args.clients)


async def first_answer(args: argparse.Namespace) -> None:
    sizes = sorted({n for n in args.background if n > 0})
    with_bg = f" and with {', '.join(f'{n:,}' for n in sizes)} Services at zero" if sizes else ""
    print(
        f"== (f) apply → first answer: {args.services} new Services without wait, "
        f"{args.waited} with ?wait=1, polled every {args.poll_ms:g} ms; empty stack{with_bg} =="
    )
    poll_s = args.poll_ms / 1000
    timeline = Timeline()
    scenarios = [Scenario("empty", 0)]
    with tempfile.TemporaryDirectory(prefix="wakegate-bench-apply-") as tmp, pod_log(timeline):
        work = Path(tmp)
        async with start_client(poll_s) as timing:
            app_start = [await timing.start_app() for _ in range(args.baseline)]
            async with local_stack(
                work / "stack",
                timeline,
                autoscaler=SHORT,
                allow_zero_initial_scale=True,
                instrument=instrument,
            ) as (stack, api):
                common = {
                    "services": args.services,
                    "waited": args.waited,
                    "timeout": args.timeout,
                    "max_timeouts": args.max_timeouts,
                    "work_dir": work,
                }
                await measure(stack, api, timing, timeline, scenarios[0], **common)
                have = 0
                for size in sizes:
                    loaded = await load_background(
                        stack,
                        api,
                        timeline,
                        have,
                        size,
                        batch=args.batch,
                        max_pods=args.max_pods,
                        timeout=args.load_timeout,
                    )
                    report_loaded(loaded, args.max_pods)
                    label = f"{loaded.applied:,} bg" + ("" if loaded.zero_s else "*")
                    scenarios.append(Scenario(label, loaded.applied, loaded=loaded))
                    await measure(stack, api, timing, timeline, scenarios[-1], **common)
                    have = loaded.applied
    report(app_start, scenarios, args.poll_ms)


def parser() -> argparse.ArgumentParser:
    p = command_line("apply", __doc__)
    p.add_argument("--services", type=int, default=20, help="new Services applied without wait")
    p.add_argument("--waited", type=int, default=20, help="new Services applied with ?wait=1")
    p.add_argument("--baseline", type=int, default=20, help="app starts for the baseline")
    p.add_argument(
        "--background",
        type=int,
        nargs="*",
        default=[1000],
        help="Services at zero for part 2, one measurement per size (the stack grows); "
        "none skips it",
    )
    p.add_argument("--batch", type=int, default=250, help="background Services per PUT")
    p.add_argument(
        "--max-pods",
        type=int,
        default=200,
        help="when idling to zero: a further PUT waits until fewer applied Services than "
        "this are not yet at zero",
    )
    p.add_argument(
        "--load-timeout", type=float, default=90.0, help="seconds for the background to settle"
    )
    p.add_argument("--timeout", type=float, default=20.0, help="seconds each apply may take")
    p.add_argument(
        "--max-timeouts", type=int, default=2, help="applies without a 200 before a part stops"
    )
    p.add_argument("--poll-ms", type=float, default=5.0, help="gateway (and app) poll interval")
    p.add_argument(
        "--parts",
        nargs="+",
        choices=("first", "bulk"),
        default=["first", "bulk"],
        help="first: apply → first answer; bulk: --bulk Services at once → all served",
    )
    p.add_argument("--bulk", type=int, default=1000, help="Services applied at once in (f.2)")
    p.add_argument("--bulk-baseline", type=int, default=10, help="the (f.2) baseline's size")
    p.add_argument(
        "--clients", type=int, default=8, help="(f.2): applies of one Service in flight at once"
    )
    return p


def run(argv: Sequence[str] = ()) -> None:
    asyncio.run(main_async(parser().parse_args(list(argv))))


if __name__ == "__main__":
    run(sys.argv[1:])
