"""The seed's second half, end to end with short windows: idle → zero pods, the next
request wakes the revision and is answered, 50 concurrent requests with target 10 →
5 pods, then back to zero. Real Envoy, real activator process, real pods, real `hey`."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import re
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio

from tests.support.backends import get, probing
from tests.support.chaos import in_flight, kill_process, unexplained
from tests.support.waiting import eventually
from tests.test_local_serving import HOST, Client, service, stack_config
from wakegate.autoscaler.config import AutoscalerConfig
from wakegate.ingress.model import BackendRef
from wakegate.stack import LocalStack, StackConfig

pytestmark = pytest.mark.envoy

WINDOW_S, GRACE_S, TICK_S = 6.0, 2.0, 1.0
ECHO = Path(__file__).resolve().parent / "backends" / "echo.py"


@pytest_asyncio.fixture
async def client(tmp_path: Path) -> AsyncIterator[Client]:
    config = stack_config(tmp_path)
    config.autoscaler = AutoscalerConfig(
        stable_window_s=WINDOW_S,
        scale_to_zero_grace_period_s=GRACE_S,
        tick_interval_s=TICK_S,
    )
    stack = LocalStack(config)
    await stack.start()
    try:
        yield Client(stack)
    finally:
        await stack.stop()


async def ready_pods(client: Client) -> int:
    async with aiohttp.ClientSession() as session:
        async with session.get(client.api + "/v1/pods") as resp:
            return sum(1 for p in await resp.json() if p["ready"])


async def wait_pods(client: Client, count: int, timeout_s: float) -> float:
    """Seconds until exactly `count` pods are ready; fails after `timeout_s`."""
    started = time.monotonic()
    while (n := await ready_pods(client)) != count:
        assert time.monotonic() - started < timeout_s, f"{n} pods, expected {count}"
        await asyncio.sleep(0.1)
    return time.monotonic() - started


async def test_idle_to_zero_wake_on_request_and_scale_out_under_hey(client: Client) -> None:
    hey = shutil.which("hey")
    assert hey, "the load generator `hey` is required (Debian package hey)"
    status, reply = await client.apply(service())
    assert status == 200 and reply["served"], reply
    assert await client.hello() == (200, "Hello World!\n")
    last_request = time.monotonic()

    # Idle: zero pods after the stable window and the grace period (± a tick, plus
    # the pod's own stop).
    await wait_pods(client, 0, WINDOW_S + GRACE_S + 10)
    idle = time.monotonic() - last_request
    assert WINDOW_S - TICK_S <= idle <= WINDOW_S + GRACE_S + 3 * TICK_S, idle

    # The next request wakes the revision and is answered, not refused.
    started = time.monotonic()
    assert await client.hello() == (200, "Hello World!\n")
    print(f"cold start through the activator: {(time.monotonic() - started) * 1000:.0f} ms")
    assert await ready_pods(client) == 1

    # 50 concurrent requests, target 10 per pod → 5 pods, never more than 6. The load is
    # what the gateway sees in flight on the revision's cluster (as Knative's activator
    # counts what it holds): on two cores shared with hey, hey's own turn on the CPU
    # between a response and its next request is not in flight anywhere, so the
    # autoscaler sees 30 to 50 of the 50 (less, the faster the path), and asks for
    # ceil(load / 10) pods: 4 or 5 on this machine (kept while it panics).
    most = 0
    done = asyncio.Event()

    async def watch() -> None:
        nonlocal most
        while not done.is_set():
            most = max(most, await ready_pods(client))
            await asyncio.sleep(0.2)

    watcher = asyncio.create_task(watch())
    proc = await asyncio.create_subprocess_exec(
        hey, "-z", "12s", "-c", "50", "-host", HOST, client.gateway + "/",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await proc.communicate()
    pods_at_end = await ready_pods(client)
    done.set()
    await watcher
    report = out.decode()
    codes = dict(re.findall(r"\[(\d{3})\]\s+(\d+) responses", report))
    assert codes and set(codes) == {"200"}, report
    async with aiohttp.ClientSession() as session:
        async with session.get(client.api + "/v1/revisions") as resp:
            decision = (await resp.json())[0]["autoscaler"]
    load = decision["panicLoad"] if decision["panicking"] else decision["stableLoad"]
    print(
        f"hey: {codes['200']} responses, all 200; pods at the end {pods_at_end}, most {most}; "
        f"observed load {load:.1f}"
    )
    assert pods_at_end == decision["desired"], (decision, report)
    assert 3 <= pods_at_end <= 5 and load > 20, (decision, report)
    assert most <= 6

    # Load stops → back to zero.
    await wait_pods(client, 0, WINDOW_S + GRACE_S + 15)


async def test_a_burst_of_50_at_zero_pods_all_succeed(client: Client) -> None:
    status, reply = await client.apply(service())
    assert status == 200 and reply["served"], reply
    await wait_pods(client, 0, WINDOW_S + GRACE_S + 10)

    async with aiohttp.ClientSession() as session:
        results = await asyncio.gather(
            *(get(client.gateway + "/", host=HOST, session=session) for _ in range(50))
        )
    assert [(s, b) for s, b, _ in results] == [(200, "Hello World!\n")] * 50


async def revision_mode(client: Client) -> str:
    async with aiohttp.ClientSession() as session:
        async with session.get(client.api + "/v1/revisions") as resp:
            return str((await resp.json())[0]["autoscaler"]["mode"])


async def test_proxy_serve_switches_under_load_drop_nothing(client: Client) -> None:
    """The activator goes in and out of the path while a prober hammers the host."""
    pinned = service()
    pinned["spec"]["template"]["metadata"]["annotations"]["autoscaling.knative.dev/min-scale"] = "1"
    status, reply = await client.apply(pinned)
    assert status == 200 and reply["served"], reply
    serving = client.stack.serving
    assert serving is not None and serving.activation is not None
    switches = []
    expected = (200, "Hello World!\n")
    async with probing(client.gateway + "/", HOST, lambda *answer: answer == expected) as probes:
        # Target burst capacity -1 keeps the activator in the path; 0 never does.
        for burst, mode in [(0, "serve"), (-1, "proxy")] * 3:
            serving.activation.config = dataclasses.replace(
                serving.activation.config, target_burst_capacity=burst
            )
            started = time.monotonic()
            while await revision_mode(client) != mode:
                assert time.monotonic() - started < 15, f"no switch to {mode}"
                await asyncio.sleep(0.1)
            switches.append(mode)
            await asyncio.sleep(1.0)
    assert switches == ["serve", "proxy"] * 3
    assert probes.served > 200
    assert probes.failures == [], probes.summary()


async def test_a_pod_killed_under_load_is_replaced(client: Client) -> None:
    """SIGKILL one of two pods under load from 4 sequential clients. Only requests in
    flight on it when it dies may fail (their connections are reset under them, which
    is not safe to retry): those sent to it afterwards, while it is still among the
    endpoints, never reached it and the gateway retries them on the other pod."""
    spec = service()
    annotations = spec["spec"]["template"]["metadata"]["annotations"]
    annotations["autoscaling.knative.dev/min-scale"] = "2"
    annotations["autoscaling.knative.dev/target-burst-capacity"] = "0"
    status, reply = await client.apply(spec)
    assert status == 200 and reply["served"], reply
    await wait_pods(client, 2, 15)
    _, pods = await client.read("/v1/pods")
    victim = pods[0]

    expected = (200, "Hello World!\n")
    async with probing(client.gateway + "/", HOST, lambda *a: a == expected) as probes:
        await asyncio.sleep(1.0)
        kill = await kill_process(victim["pid"], "pod")
        await asyncio.sleep(0.5)
        await wait_pods(client, 2, 20)
        await asyncio.sleep(1.0)
    flying = in_flight(probes.attempts, kill)
    print(f"pod crash under load: {probes.summary()}; {len(flying)} in flight between the kill "
          f"and the pod seen gone ({(kill.gone - kill.signalled) * 1000:.1f} ms)")  # fmt: skip
    assert probes.served > 200
    # Each client has one request in flight at a time: at most 4 were on the pod.
    assert len(probes.failures) <= 4, probes.summary()
    assert unexplained(probes.attempts, [kill]) == [], probes.summary()
    _, pods = await client.read("/v1/pods")
    assert victim["name"] in {p["name"] for p in pods}
    assert next(p for p in pods if p["name"] == victim["name"])["restarts"] == 1


async def test_gateway_concurrency_metric_matches_a_closed_loop_load(client: Client) -> None:
    """hey's N workers keep up to N requests in flight at a backend that takes 50 ms per
    request; the autoscaler's metric for the revision is what was really in flight
    (Little's law over hey's own figures: requests per second x mean latency, within 15 %),
    and above 3/4 of N (a little under N on shared cores: a worker's own turn is not in
    flight anywhere)."""
    hey = shutil.which("hey")
    assert hey, "the load generator `hey` is required (Debian package hey)"
    spec = service("echo")
    template = spec["spec"]["template"]
    template["spec"]["containers"][0]["command"] = ["python3", str(ECHO)]
    # A high target keeps one pod, so the figure is not moved by scaling.
    template["metadata"]["annotations"]["autoscaling.knative.dev/target"] = "1000"
    status, reply = await client.apply(spec)
    assert status == 200 and reply["served"], reply
    autoscaler = client.stack.autoscaler
    assert autoscaler is not None
    # Measured in serve mode only, so the window holds no switch from the activator.

    async def serving() -> bool:
        return await revision_mode(client) == "serve"

    await eventually(serving, 15, "serve mode", interval=0.1)
    workers = 20
    proc = await asyncio.create_subprocess_exec(
        hey, "-z", "8s", "-c", str(workers), "-host", "echo.default.example.com",
        client.gateway + "/?sleep=50", stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    await asyncio.sleep(7.0)
    observed = autoscaler.metrics.observe(
        autoscaler.clock(), "default/echo-00001", WINDOW_S, WINDOW_S / 2
    )
    out, _ = await proc.communicate()
    report = out.decode()
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", report).group(1))  # type: ignore[union-attr]
    latency = float(re.search(r"Average:\s+([\d.]+) secs", report).group(1))  # type: ignore[union-attr]
    in_flight = rate * latency
    print(
        f"closed loop of {workers}: measured {observed.panic:.2f} over the last 3 s, "
        f"in flight by hey's figures {in_flight:.2f}"
    )
    assert abs(observed.panic - in_flight) <= 0.15 * in_flight, (observed, report)
    assert observed.panic > 0.75 * workers, (observed, report)


# --- autoscaling.knative.dev/initial-scale ------------------------------------------------

INITIAL_SCALE = "autoscaling.knative.dev/initial-scale"


def scaled(name: str = "helloworld-go", **annotations: str) -> dict:
    doc = service(name)
    doc["spec"]["template"]["metadata"]["annotations"].update(annotations)
    return doc


def zero_scale_config(tmp_path: Path, **autoscaler: float) -> StackConfig:
    config = stack_config(tmp_path)
    config.allow_zero_initial_scale = True
    settings = {
        "stable_window_s": WINDOW_S,
        "scale_to_zero_grace_period_s": GRACE_S,
        "tick_interval_s": TICK_S,
        **autoscaler,
    }
    config.autoscaler = AutoscalerConfig(**settings)
    return config


@pytest_asyncio.fixture
async def zero_client(tmp_path: Path) -> AsyncIterator[Client]:
    stack = LocalStack(zero_scale_config(tmp_path))
    await stack.start()
    try:
        yield Client(stack)
    finally:
        await stack.stop()


def condition(status: dict, kind: str) -> dict:
    return next(c for c in status["conditions"] if c["type"] == kind)


async def test_zero_initial_scale_is_ready_without_a_pod_and_wakes_on_request(
    zero_client: Client,
) -> None:
    client = zero_client
    status, reply = await client.apply(scaled(**{INITIAL_SCALE: "0"}))
    assert status == 200 and reply["served"], reply

    # Ready, routed through the activator, and no pod was ever started.
    _, described = await client.read("/v1/services/default/helloworld-go")
    assert condition(described["status"], "Ready")["status"] == "True", described["status"]
    assert described["status"]["latestReadyRevisionName"] == "helloworld-go-00001"
    assert described["pods"] == []
    _, revisions = await client.read("/v1/revisions")
    (revision,) = revisions
    assert (revision["ready"], revision["routed"], revision["pods"]) == (True, True, 0)
    assert revision["autoscaler"]["mode"] == "proxy"
    assert client.stack.activator is not None
    backend = client.stack.cp.state().backends[BackendRef("default", revision["name"], 80).key]
    assert [e.port for e in backend.endpoints] == [client.stack.activator.port]

    # The first request wakes it through the activator and is answered by its pod.
    assert await client.hello() == (200, "Hello World!\n")
    assert await ready_pods(client) == 1

    # From then on it is like any revision: idle, it goes back to zero.
    await wait_pods(client, 0, WINDOW_S + GRACE_S + 10)
    assert await client.hello() == (200, "Hello World!\n")


async def test_initial_scale_three_and_min_scale_over_a_zero_initial_scale(
    tmp_path: Path,
) -> None:
    # Ticks far apart: nothing scales the new revisions down while they are counted.
    stack = LocalStack(zero_scale_config(tmp_path, tick_interval_s=600.0))
    await stack.start()
    try:
        client = Client(stack)
        three = scaled("three", **{INITIAL_SCALE: "3"})
        floor = scaled("floor", **{INITIAL_SCALE: "0", "autoscaling.knative.dev/min-scale": "2"})
        status, reply = await client.apply(three, floor)
        assert status == 200 and reply["served"], reply
        # A revision is Ready once all its initial pods are; min-scale above the initial
        # scale wins (Knative's activeThreshold).
        _, pods = await client.read("/v1/pods")
        ready = collections.Counter(p["revision"] for p in pods if p["ready"])
        assert ready == {"three-00001": 3, "floor-00001": 2}, pods
        for name in ("three", "floor"):
            _, described = await client.read(f"/v1/services/default/{name}")
            assert condition(described["status"], "Ready")["status"] == "True"
            assert await client.hello(f"{name}.default.example.com") == (200, "Hello World!\n")
    finally:
        await stack.stop()


async def test_zero_initial_scale_once_disallowed_still_serves_but_is_not_reapplied(
    tmp_path: Path,
) -> None:
    zero = scaled(**{INITIAL_SCALE: "0"})
    stack = LocalStack(zero_scale_config(tmp_path))
    await stack.start()
    try:
        status, reply = await Client(stack).apply(zero)
        assert status == 200 and reply["served"], reply
    finally:
        await stack.stop()

    # The same data, now without allow-zero-initial-scale: the stored revision still
    # loads and serves (at the global initial scale, as Knative does); applying it again
    # is refused with the field named, and nothing changes.
    config = zero_scale_config(tmp_path)
    config.allow_zero_initial_scale = False
    stack = LocalStack(config)
    await stack.start()
    try:
        client = Client(stack)
        assert stack.serving is not None
        assert await stack.serving.wait_served("default/helloworld-go", 1, 30)
        assert await client.hello() == (200, "Hello World!\n")
        status, reply = await client.apply(zero, wait=False)
        assert status == 400, reply
        message = reply["error"]
        assert "\n" not in message
        assert message.startswith(
            "document 0: spec.template.metadata.annotations"
            "[autoscaling.knative.dev/initial-scale]: "
        ), message
        _, described = await client.read("/v1/services/default/helloworld-go")
        assert [r["name"] for r in described["revisions"]] == ["helloworld-go-00001"]
        assert await client.hello() == (200, "Hello World!\n")
    finally:
        await stack.stop()
