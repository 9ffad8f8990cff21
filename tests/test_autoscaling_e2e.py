"""Knative autoscaling end to end with short windows: real Envoy, real activator, real
pods (tests/backends/echo.py, which logs its own peak of requests in flight).

- `containerConcurrency: 1` under 8 concurrent clients: no pod ever holds 2 requests,
  from the first request after apply, in proxy mode and (`target-burst-capacity: "0"`)
  in serve mode, through scale-up and scale-down; every response is 200.
- `metric: rps` with target 50 under 200 requests a second → 4 pods.
- `scale-down-delay: "20s"` keeps the pods 20 s after the load stops.
- `activation-scale: "3"` wakes the revision to 3 pods.
- a metric source that stops reporting does not scale a loaded revision down.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from tests.test_local_serving import Client, service, stack_config
from tests.test_scale_to_zero import wait_pods
from wakegate.autoscaler.config import AutoscalerConfig
from wakegate.autoscaler.decider import Mode
from wakegate.stack import LocalStack

pytestmark = pytest.mark.envoy

ECHO = Path(__file__).resolve().parent / "backends" / "echo.py"
WINDOW_S, GRACE_S, TICK_S = 6.0, 2.0, 1.0
NAMESPACE = "default"


@pytest_asyncio.fixture
async def client(tmp_path: Path) -> AsyncIterator[Client]:
    config = stack_config(tmp_path)
    config.autoscaler = AutoscalerConfig(
        stable_window_s=WINDOW_S, scale_to_zero_grace_period_s=GRACE_S, tick_interval_s=TICK_S
    )
    stack = LocalStack(config)
    await stack.start()
    try:
        yield Client(stack)
    finally:
        await stack.stop()


def echo_service(name: str, annotations: dict[str, str], **spec: Any) -> dict[str, Any]:
    doc = service(name)
    template = doc["spec"]["template"]
    template["spec"]["containers"][0]["command"] = ["python3", str(ECHO), "--grace", "5"]
    template["spec"].update(spec)
    template["metadata"]["annotations"] = {
        f"autoscaling.knative.dev/{key}": value for key, value in annotations.items()
    }
    return doc


def host(name: str) -> str:
    return f"{name}.{NAMESPACE}.example.com"


async def pods(client: Client, revision: str) -> list[dict[str, Any]]:
    _, listed = await client.read("/v1/pods")
    return [p for p in listed if p["revision"] == revision]


async def ready(client: Client, revision: str) -> int:
    return sum(1 for p in await pods(client, revision) if p["ready"])


def peaks(client: Client, revision: str) -> dict[str, int]:
    """Every pod the revision ever ran (its log outlives it) → its peak in flight."""
    logs = Path(client.stack.config.data_dir) / "logs"
    found = {}
    for log in logs.glob(f"{revision}-*.log"):
        values = [int(v) for v in re.findall(r"^PEAK (\d+)$", log.read_text(), re.M)]
        found[log.stem] = max(values, default=0)
    return found


async def closed_loop(
    client: Client, name: str, workers: int, seconds: float, path: str
) -> Counter[int]:
    """`workers` clients, each sending its next request as soon as the last is answered."""
    statuses: Counter[int] = Counter()
    deadline = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=workers)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            while time.monotonic() < deadline:
                async with session.get(
                    client.gateway + path, headers={"Host": host(name)}
                ) as resp:
                    await resp.read()
                    statuses[resp.status] += 1

        await asyncio.gather(*(worker() for _ in range(workers)))
    return statuses


async def watch_modes(client: Client, key: str, until: asyncio.Event) -> set[Mode | None]:
    autoscaler = client.stack.autoscaler
    assert autoscaler is not None
    seen: set[Mode | None] = set()
    while not until.is_set():
        seen.add(autoscaler.mode(key))
        await asyncio.sleep(0.05)
    return seen


@pytest.mark.parametrize(
    "annotations",
    [{}, {"target-burst-capacity": "0"}],
    ids=["proxy (default burst capacity)", "serve (target-burst-capacity 0)"],
)
async def test_container_concurrency_one_is_a_hard_limit(
    client: Client, annotations: dict[str, str]
) -> None:
    name = "cc1"
    status, reply = await client.apply(
        echo_service(name, annotations, containerConcurrency=1), wait=True
    )
    assert status == 200 and reply["served"], reply
    revision = f"{name}-00001"
    done = asyncio.Event()
    modes = asyncio.create_task(watch_modes(client, f"{NAMESPACE}/{revision}", done))
    # From the first request after apply: 8 clients, each request 200 ms.
    statuses = await closed_loop(client, name, 8, 10.0, "/?sleep=200")
    most = await ready(client, revision)
    # Then the load stops and the revision scales down, to zero.
    await wait_pods(client, 0, WINDOW_S + GRACE_S + 20)
    done.set()
    seen = await modes
    assert set(statuses) == {200}, statuses
    assert sum(statuses.values()) > 8 * 10
    found = peaks(client, revision)
    print(f"{dict(statuses)}; modes {sorted(str(m) for m in seen)}; peaks {found}")
    assert len(found) >= 2, found  # it scaled out
    assert most >= 2
    assert max(found.values()) == 1, found
    if annotations:
        assert Mode.SERVE in seen
    assert await ready(client, revision) == 0


async def hey(client: Client, name: str, *args: str, path: str = "/") -> dict[str, str]:
    """Run `hey` against the Service; its status-code counts."""
    binary = shutil.which("hey")
    assert binary, "the load generator `hey` is required (Debian package hey)"
    proc = await asyncio.create_subprocess_exec(
        binary, *args, "-host", host(name), client.gateway + path,
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await proc.communicate()
    return dict(re.findall(r"\[(\d{3})\]\s+(\d+) responses", out.decode()))


async def test_rps_target_50_under_about_200_requests_a_second_runs_4_pods(
    client: Client,
) -> None:
    status, reply = await client.apply(
        echo_service("rps", {"metric": "rps", "target": "50", "window": "12s"})
    )
    assert status == 200 and reply["served"], reply
    # hey paces each worker at most at its rate: 4 x 49 = 196 requests a second,
    # ceil(196 / 50) = 4 (200 exactly would put every rounding of the count on a knife edge).
    codes = await hey(client, "rps", "-z", "20s", "-c", "4", "-q", "49")
    pods_at_end = await ready(client, "rps-00001")
    assert set(codes) == {"200"}, codes
    rate = int(codes["200"]) / 20
    print(f"{rate:.0f} requests a second → {pods_at_end} pods")
    assert 150 <= rate <= 200
    assert pods_at_end == 4


async def test_scale_down_delay_keeps_the_pods_after_the_load_stops(client: Client) -> None:
    status, reply = await client.apply(
        echo_service("delay", {"target": "10", "scale-down-delay": "20s"})
    )
    assert status == 200 and reply["served"], reply
    # 20 ms at the pod per request: the 20 requests hey keeps in flight are in the
    # activator's measured concurrency nearly all the time (well over 1 pod's worth
    # until the load stops), not just for the share of the round trip it takes.
    codes = await hey(client, "delay", "-z", "8s", "-c", "20", path="/sleep/20")
    stopped = time.monotonic()
    assert set(codes) == {"200"}, codes
    loaded = await ready(client, "delay-00001")
    assert loaded >= 2
    # Without the delay the pods would go a stable window (6 s) after the load.
    while await ready(client, "delay-00001") >= loaded:
        assert time.monotonic() - stopped < 20 + WINDOW_S + 10, "no scale-down at all"
        await asyncio.sleep(0.2)
    held = time.monotonic() - stopped
    print(f"{loaded} pods kept {held:.1f} s after the load stopped")
    assert held >= 20


async def test_activation_scale_wakes_to_three_pods(client: Client) -> None:
    status, reply = await client.apply(echo_service("wake", {"activation-scale": "3"}))
    assert status == 200 and reply["served"], reply
    await wait_pods(client, 0, WINDOW_S + GRACE_S + 10)
    async with aiohttp.ClientSession() as session:
        async with session.get(client.gateway + "/", headers={"Host": host("wake")}) as resp:
            assert resp.status == 200
    await wait_pods(client, 3, 10)


async def test_a_metric_source_that_stops_does_not_scale_a_loaded_revision_down(
    client: Client,
) -> None:
    status, reply = await client.apply(echo_service("steady", {"target": "10"}))
    assert status == 200 and reply["served"], reply
    autoscaler = client.stack.autoscaler
    assert autoscaler is not None
    load = asyncio.create_task(hey(client, "steady", "-z", "10s", "-c", "30", path="/?sleep=100"))
    await asyncio.sleep(8)
    loaded = await ready(client, "steady-00001")
    assert loaded >= 3

    async def gone() -> Any:
        raise ConnectionRefusedError("the gateway's admin endpoint does not answer")

    source, autoscaler.sample = autoscaler.sample, gone  # type: ignore[method-assign]
    codes = await load
    assert set(codes) == {"200"}, codes
    # No data for longer than the stable window and the grace period: no decision, so
    # the revision keeps its pods although nobody sends anything.
    await asyncio.sleep(WINDOW_S + GRACE_S + 4)
    decision = autoscaler.decision(f"{NAMESPACE}/steady-00001")
    assert decision is not None and not decision.has_data, decision
    assert await ready(client, "steady-00001") == loaded
    # Reports of zero load are data: the revision scales down.
    autoscaler.sample = source  # type: ignore[method-assign]
    started = time.monotonic()
    while await ready(client, "steady-00001") >= loaded:
        assert time.monotonic() - started < WINDOW_S + 10, "no scale-down on zero load"
        await asyncio.sleep(0.2)
