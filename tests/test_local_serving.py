"""Knative Services on one machine, end to end: the local stack with a real Envoy,
real pod processes and a real SQLite store, driven through its loopback API."""

from __future__ import annotations

import asyncio
import collections
import copy
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import yaml

from tests.support.backends import free_port, get
from wakegate.envoy_process import GatewayError
from wakegate.stack import LocalStack, StackConfig

pytestmark = pytest.mark.envoy

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples/helloworld"
HOST = "helloworld-go.default.example.com"
SEED: dict[str, Any] = yaml.safe_load((EXAMPLE / "helloworld-go.yaml").read_text())


def service(name: str = "helloworld-go", *, target: str = "World", **spec: Any) -> dict:
    doc = copy.deepcopy(SEED)
    doc["metadata"]["name"] = name
    doc["spec"]["template"]["spec"]["containers"][0]["env"] = [{"name": "TARGET", "value": target}]
    doc["spec"].update(spec)
    return doc


class Client:
    def __init__(self, stack: LocalStack) -> None:
        self.stack = stack
        self.api = f"http://127.0.0.1:{stack.api_port}"
        self.gateway = f"http://127.0.0.1:{stack.config.port}"
        self.internal = f"http://127.0.0.1:{stack.config.internal_port}"
        self.auth = {"Authorization": f"Bearer {stack.api_token}"}

    async def apply(self, *docs: dict | str, wait: bool = True) -> tuple[int, dict]:
        body = "---\n".join(d if isinstance(d, str) else yaml.safe_dump(d) for d in docs)
        query = {"dir": str(EXAMPLE), "timeout": "30", **({"wait": "1"} if wait else {})}
        async with aiohttp.ClientSession() as session:
            async with session.put(
                self.api + "/v1/manifests", params=query, data=body, headers=self.auth
            ) as resp:
                return resp.status, await resp.json()

    async def read(self, path: str, method: str = "GET") -> tuple[int, Any]:
        async with aiohttp.ClientSession() as session:
            async with session.request(method, self.api + path, headers=self.auth) as resp:
                return resp.status, await resp.json()

    async def hello(self, host: str = HOST, base: str | None = None) -> tuple[int, str]:
        status, body, _ = await get((base or self.gateway) + "/", host=host)
        return status, body


def stack_config(data_dir: Path) -> StackConfig:
    return StackConfig(
        data_dir=data_dir,
        port=free_port(),
        internal_port=free_port(),
        tls_port=free_port(),
        xds_port=0,
        api_port=0,
    )


@pytest_asyncio.fixture
async def client(tmp_path: Path) -> AsyncIterator[Client]:
    stack = LocalStack(stack_config(tmp_path))
    await stack.start()
    try:
        yield Client(stack)
    finally:
        await stack.stop()


async def test_the_seed_story_revisions_splits_tags_visibility_delete(client: Client) -> None:
    status, reply = await client.apply(service())
    assert status == 200 and reply["served"], reply
    assert reply["applied"][0]["revision"] == "helloworld-go-00001"
    assert reply["applied"][0]["url"] == f"http://{HOST}"
    assert await client.hello() == (200, "Hello World!\n")

    # Re-applying the same manifest creates no revision.
    status, reply = await client.apply(service())
    assert status == 200 and reply["applied"][0]["revision"] == ""

    # A template change creates -00002, which takes all traffic once ready.
    status, reply = await client.apply(service(target="Wakegate"))
    assert status == 200 and reply["applied"][0]["revision"] == "helloworld-go-00002"
    assert await client.hello() == (200, "Hello Wakegate!\n")

    # 50/50 across both revisions, with a tag on each.
    split = service(
        target="Wakegate",
        traffic=[
            {"revisionName": "helloworld-go-00001", "percent": 50, "tag": "old"},
            {"revisionName": "helloworld-go-00002", "percent": 50, "tag": "new"},
        ],
    )
    status, reply = await client.apply(split)
    assert status == 200 and reply["served"], reply
    counts: collections.Counter[str] = collections.Counter()
    async with aiohttp.ClientSession() as session:
        sem = asyncio.Semaphore(16)

        async def one() -> None:
            async with sem:
                code, body, _ = await get(client.gateway + "/", host=HOST, session=session)
                counts[f"{code} {body}"] += 1

        await asyncio.gather(*(one() for _ in range(1000)))
    assert set(counts) == {"200 Hello World!\n", "200 Hello Wakegate!\n"}, counts
    assert all(abs(n / 10 - 50) <= 10 for n in counts.values()), counts
    for _ in range(5):
        assert await client.hello(f"old-{HOST}") == (200, "Hello World!\n")
        assert await client.hello(f"new-{HOST}") == (200, "Hello Wakegate!\n")

    status, routes = await client.read("/v1/routes")
    traffic = {t["revisionName"]: t["percent"] for t in routes[0]["traffic"]}
    assert traffic == {"helloworld-go-00001": 50, "helloworld-go-00002": 50}

    # A cluster-local service: only on the internal listener.
    private = service("private")
    private["metadata"]["labels"] = {"networking.knative.dev/visibility": "cluster-local"}
    status, reply = await client.apply(private)
    assert status == 200 and reply["served"], reply
    assert (await client.hello("private.default.example.com"))[0] == 404
    internal = await client.hello("private.default.svc.cluster.local", base=client.internal)
    assert internal == (200, "Hello World!\n")

    # Delete: the route goes (404) and so do the pods.
    status, _ = await client.read("/v1/services/default/helloworld-go", method="DELETE")
    assert status == 200
    assert (await client.hello())[0] == 404
    status, pods = await client.read("/v1/pods")
    assert [p["revision"] for p in pods if p["revision"].startswith("helloworld-go")] == []


async def test_restart_serves_the_same_services_without_reapplying(tmp_path: Path) -> None:
    config = stack_config(tmp_path)
    stack = LocalStack(config)
    await stack.start()
    try:
        status, reply = await Client(stack).apply(service(target="Again"))
        assert status == 200 and reply["served"], reply
    finally:
        await stack.stop()

    stack = LocalStack(config)
    await stack.start()
    try:
        client = Client(stack)
        assert stack.serving is not None
        assert await stack.serving.wait_served("default/helloworld-go", 1, 30)
        assert await client.hello() == (200, "Hello Again!\n")
        status, revisions = await client.read("/v1/revisions")
        assert [r["name"] for r in revisions] == ["helloworld-go-00001"]
    finally:
        await stack.stop()


def _with(path: list[Any], value: Any, base: dict | None = None) -> dict:
    doc = copy.deepcopy(base or service())
    node: Any = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return doc


ANNOTATIONS = ["spec", "template", "metadata", "annotations"]
CONTAINER = ["spec", "template", "spec", "containers", 0]

BAD_INPUT: list[tuple[str, str | dict, str]] = [
    ("malformed yaml", "apiVersion: [unclosed", "malformed YAML"),
    ("wrong apiVersion", _with(["apiVersion"], "serving.knative.dev/v2"), "apiVersion"),
    ("no apiVersion", {k: v for k, v in service().items() if k != "apiVersion"}, "apiVersion"),
    ("core Service", _with(["apiVersion"], "v1"), 'expected "serving.knative.dev/v1"'),
    ("wrong kind", _with(["kind"], "Servic"), "kind"),
    ("invalid name", _with(["metadata", "name"], "Hello_World"), "metadata.name"),
    ("unknown field", _with(["spec", "replicas"], 3), "spec.replicas"),
    ("target abc", _with([*ANNOTATIONS, "autoscaling.knative.dev/target"], "abc"), "target"),
    ("window 1s", _with([*ANNOTATIONS, "autoscaling.knative.dev/window"], "1s"), "window"),
    (
        "percents sum to 90",
        _with(["spec", "traffic"], [{"latestRevision": True, "percent": 90}]),
        "percents sum to 90",
    ),
    (
        "unknown revision",
        _with(["spec", "traffic"], [{"revisionName": "helloworld-go-00009", "percent": 100}]),
        "spec.traffic[0].revisionName",
    ),
    (
        "host claimed twice",
        # Service "old-helloworld-go" has the host of helloworld-go's tag "old".
        service("old-helloworld-go"),
        "already served by",
    ),
    (
        # Not allowed unless the stack runs with allow-zero-initial-scale.
        "initial-scale 0",
        _with([*ANNOTATIONS, "autoscaling.knative.dev/initial-scale"], "0"),
        "spec.template.metadata.annotations[autoscaling.knative.dev/initial-scale]: "
        "invalid value: 0, initial-scale=0 not allowed by cluster",
    ),
    *(
        (
            f"{key} {value}",
            _with([*ANNOTATIONS, key], value),
            f"spec.template.metadata.annotations[{key}]: {message}",
        )
        for key, value, message in (
            ("autoscaling.knative.dev/metric", "cpu", "invalid value: cpu"),
            ("autoscaling.knative.dev/scale-down-delay", "2h", "expected 0s <= 2h <= 1h0m0s"),
            (
                "autoscaling.knative.dev/activation-scale",
                "1",
                "activation-scale=1 must be greater than 1",
            ),
            (
                "autoscaling.knative.dev/scale-to-zero-pod-retention-period",
                "-1s",
                "expected 0s <= -1s <= 1h0m0s",
            ),
            (
                "autoscaling.knative.dev/metric-aggregation-algorithm",
                "median",
                "invalid value: median",
            ),
            ("autoscaling.knative.dev/panic-window-percentage", "0", "expected 1 <= 0 <= 100"),
            (
                "autoscaling.knative.dev/panic-threshold-percentage",
                "100",
                "expected 110 <= 100 <= 1000",
            ),
            (
                "autoscaling.knative.dev/target-utilization-percentage",
                "0",
                "expected 1 <= 0 <= 100",
            ),
            (
                "serving.knative.dev/progress-deadline",
                "1.5s",
                "progress-deadline=1.5s is not at second precision",
            ),
        )
    ),
    ("command not found", _with([*CONTAINER, "command"], ["no-such-cmd-x"]), "not found"),
    ("image only", _with([*CONTAINER, "command"], []), "runs commands, not images"),
]


async def test_bad_input_is_rejected_and_nothing_changes(client: Client) -> None:
    tagged = service(traffic=[{"latestRevision": True, "percent": 100, "tag": "old"}])
    status, reply = await client.apply(tagged)
    assert status == 200 and reply["served"], reply
    _, before = await client.read("/v1/revisions")

    for case, doc, expected in BAD_INPUT:
        # The bad document comes second: nothing of the first may be applied either.
        first = service("innocent")
        status, reply = await client.apply(first, doc, wait=False)
        assert status == 400, (case, reply)
        message = reply["error"]
        assert expected in message and "\n" not in message, (case, message)
        _, services = await client.read("/v1/services")
        assert [s["name"] for s in services] == ["helloworld-go"], case
        _, after = await client.read("/v1/revisions")
        assert after == before, case
        assert await client.hello() == (200, "Hello World!\n"), case


async def test_a_port_in_use_is_named(tmp_path: Path) -> None:
    config = stack_config(tmp_path)
    with __import__("socket").socket() as taken:
        taken.bind(("127.0.0.1", config.port))
        taken.listen()
        with pytest.raises(GatewayError, match=rf"{config.port}.*in use"):
            LocalStack(config).preflight()


async def test_many_services_in_one_file_are_reconciled_together_and_all_served(
    tmp_path: Path,
) -> None:
    """Thirty Services in one apply: reconciled in batches with one wait for the gateway
    per batch (not one each), every one Ready and served, a request to any of them
    answered; one deleted and applied again comes back with a new first revision."""
    config = stack_config(tmp_path)
    config.allow_zero_initial_scale = True
    stack = LocalStack(config)
    await stack.start()
    try:
        client = Client(stack)
        serving = stack.serving
        assert serving is not None
        batches: list[int] = []
        waits: list[float] = []
        reconcile_batch, wait_served = serving.reconcile_batch, stack.cp.wait_served

        async def recorded_batch(keys: Any) -> None:
            batches.append(len(keys))
            await reconcile_batch(keys)

        async def recorded_wait(timeout: float = 10.0) -> bool:
            waits.append(timeout)
            return await wait_served(timeout)

        serving.reconcile_batch = recorded_batch  # type: ignore[method-assign]
        stack.cp.wait_served = recorded_wait  # type: ignore[method-assign]
        names = [f"bulk-{i:02d}" for i in range(30)]
        zero = {"autoscaling.knative.dev/initial-scale": "0"}
        docs = []
        for name in names:
            doc = service(name, target=name)
            doc["spec"]["template"]["metadata"]["annotations"].update(zero)
            docs.append(doc)
        status, reply = await client.apply(*docs)
        assert status == 200 and reply["served"], reply
        assert [a["outcome"] for a in reply["applied"]] == ["served"] * len(names)
        assert max(batches) > 1, batches
        assert len(waits) < len(names) / 2, (batches, waits)

        status, services = await client.read("/v1/services")
        ready = {s["name"]: s["ready"] for s in services}
        assert all(ready[name] == "True" for name in names), ready
        assert await client.hello(f"{names[17]}.default.example.com") == (
            200,
            f"Hello {names[17]}!\n",
        )

        status, _ = await client.read(f"/v1/services/default/{names[3]}", method="DELETE")
        assert status == 200
        status, reply = await client.apply(docs[3])
        assert status == 200 and reply["served"], reply
        assert reply["applied"][0]["revision"] == f"{names[3]}-00001"
        status, revisions = await client.read("/v1/revisions")
        assert sorted(r["name"] for r in revisions) == sorted(f"{n}-00001" for n in names)
    finally:
        await stack.stop()
