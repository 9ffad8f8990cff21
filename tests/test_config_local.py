"""Knative's ConfigMaps in local mode, end to end: applied live to running revisions,
refused with the key named, kept across restarts; and `apply --wait` that ends as soon
as every Service is served or has failed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml

from tests.support.waiting import eventually
from tests.test_local_serving import HOST, Client, service, stack_config
from wakegate.autoscaler.config import AutoscalerConfig
from wakegate.stack import LocalStack

pytestmark = pytest.mark.envoy


def configmap(name: str, **data: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "knative-serving"},
        "data": data,
    }


@pytest_asyncio.fixture
async def client(tmp_path: Path) -> AsyncIterator[Client]:
    # Knative's default windows (60 s stable, 30 s grace): only a ConfigMap can make
    # the revision reach zero within the test.
    config = replace(stack_config(tmp_path), autoscaler=AutoscalerConfig())
    stack = LocalStack(config)
    await stack.start()
    try:
        yield Client(stack)
    finally:
        await stack.stop()


async def config_rows(client: Client, name: str) -> dict[str, tuple[str, str]]:
    status, rows = await client.read("/v1/config")
    assert status == 200
    return {r["key"]: (r["value"], r["source"]) for r in rows if r["name"] == name}


async def pods(client: Client) -> list[dict[str, Any]]:
    _, found = await client.read("/v1/pods")
    return [p for p in found if p["revision"].startswith("helloworld-go-")]


async def test_a_shorter_window_and_grace_take_effect_on_a_running_revision(
    client: Client,
) -> None:
    status, reply = await client.apply(service())
    assert status == 200 and reply["served"], reply
    assert await client.hello() == (200, "Hello World!\n")
    rows = await config_rows(client, "config-autoscaler")
    assert rows["stable-window"] == ("60s", "default")
    # The seed-faithful default differs from Knative's 70 %, and says so.
    assert rows["container-concurrency-target-percentage"] == ("100", "wakegate")

    status, reply = await client.apply(
        configmap(
            "config-autoscaler", **{"stable-window": "6s", "scale-to-zero-grace-period": "2s"}
        )
    )
    assert status == 200, reply
    assert reply["applied"] == [{"kind": "ConfigMap", "key": "knative-serving/config-autoscaler"}]
    rows = await config_rows(client, "config-autoscaler")
    assert rows["stable-window"] == ("6s", "ConfigMap")
    assert rows["scale-to-zero-grace-period"] == ("2s", "ConfigMap")
    # Not re-applied: the running revision goes to zero after 6 s + 2 s idle.
    await eventually(lambda: _no_pods(client), 25, "scale to zero", interval=0.2)
    assert await client.hello() == (200, "Hello World!\n")


async def _no_pods(client: Client) -> bool:
    return not await pods(client)


async def test_domain_and_tag_template_rehost_every_service(client: Client) -> None:
    tagged = service(
        traffic=[{"latestRevision": True, "percent": 100}, {"latestRevision": True, "tag": "v"}]
    )
    tagged["spec"]["traffic"][1]["percent"] = 0
    status, reply = await client.apply(tagged)
    assert status == 200 and reply["served"], reply
    assert await client.hello("v-helloworld-go.default.example.com") == (200, "Hello World!\n")

    status, reply = await client.apply(
        configmap("config-domain", **{"apps.test": ""}),
        configmap("config-network", **{"tag-template": "{{.Name}}-{{.Tag}}"}),
    )
    assert status == 200, reply
    new_host = "helloworld-go.default.apps.test"

    async def rehosted() -> bool:
        _, services = await client.read("/v1/services")
        return services[0]["url"] == f"http://{new_host}" and (await client.hello(new_host)) == (
            200,
            "Hello World!\n",
        )

    await eventually(rehosted, 15, "the new domain served", interval=0.2)
    assert (await client.hello(HOST))[0] == 404
    assert await client.hello("helloworld-go-v.default.apps.test") == (200, "Hello World!\n")
    assert (await client.hello("v-helloworld-go.default.apps.test"))[0] == 404
    _, routes = await client.read("/v1/routes")
    urls = {t.get("tag", ""): t.get("url", "") for t in routes[0]["traffic"]}
    assert urls["v"] == "http://helloworld-go-v.default.apps.test"


@pytest.mark.parametrize(
    ("doc", "problem"),
    [
        (
            configmap("config-autoscaler", **{"stable-window": "1s"}),
            "config-autoscaler: stable-window: ",
        ),
        (
            configmap("config-autoscaler", **{"scale-to-zero-grace-period": "-5s"}),
            "config-autoscaler: scale-to-zero-grace-period: ",
        ),
        (
            configmap("config-autoscaler", **{"container-concurrency-target-default": "0"}),
            "config-autoscaler: container-concurrency-target-default: ",
        ),
        (
            configmap("config-network", **{"http-protocol": "sometimes"}),
            "config-network: http-protocol: ",
        ),
        (
            configmap("config-logging", zap="x"),
            "expected one of config-autoscaler, config-defaults",
        ),
        (
            {
                **configmap("config-domain"),
                "metadata": {"name": "config-domain", "namespace": "default"},
            },
            "expected namespace knative-serving",
        ),
    ],
)
async def test_bad_configmaps_are_refused_naming_the_key_and_change_nothing(
    client: Client, doc: dict[str, Any], problem: str
) -> None:
    before = await config_rows(client, "config-autoscaler")
    # A Service in the same file is not applied either: all or nothing.
    status, reply = await client.apply(doc, service(), wait=False)
    assert status == 400
    assert problem in reply["error"] and "\n" not in reply["error"], reply
    assert await config_rows(client, "config-autoscaler") == before
    _, services = await client.read("/v1/services")
    assert services == []


async def test_unknown_keys_are_warnings(client: Client) -> None:
    status, reply = await client.apply(
        configmap("config-autoscaler", **{"stable-window": "30s", "stabel-window": "10s"})
    )
    assert status == 200
    assert reply["notes"] == ["config-autoscaler: stabel-window: unknown key, ignored"]
    assert (await config_rows(client, "config-autoscaler"))["stable-window"] == ("30s", "ConfigMap")


async def test_a_service_is_checked_against_the_config_applied_with_it(client: Client) -> None:
    limited = configmap("config-defaults", **{"container-concurrency-max-limit": "10"})
    too_many = service()
    too_many["spec"]["template"]["spec"]["containerConcurrency"] = 20
    status, reply = await client.apply(limited, too_many, wait=False)
    assert status == 400
    assert "containerConcurrency: got 20, expected 0..10" in reply["error"], reply


async def test_a_restart_keeps_the_configmaps(tmp_path: Path) -> None:
    config = stack_config(tmp_path)
    stack = LocalStack(config)
    await stack.start()
    try:
        status, _ = await Client(stack).apply(configmap("config-domain", **{"apps.test": ""}))
        assert status == 200
    finally:
        await stack.stop()
    stack = LocalStack(config)
    await stack.start()
    try:
        client = Client(stack)
        assert (await config_rows(client, "config-domain"))["apps.test"] == ("", "ConfigMap")
        status, reply = await client.apply(service())
        assert (
            status == 200 and reply["applied"][0]["url"] == "http://helloworld-go.default.apps.test"
        )
    finally:
        await stack.stop()


def crashing(name: str, code: int) -> dict[str, Any]:
    doc = service(name)
    container = doc["spec"]["template"]["spec"]["containers"][0]
    container["command"] = ["python3", "-c", f"import sys; sys.exit({code})"]
    container.pop("args", None)
    return doc


async def test_apply_wait_fails_at_once_for_a_crashing_container_and_reports_each_service(
    client: Client,
) -> None:
    # 422, not the 504 of a wait that ran out: the failure ended it.
    status, reply = await client.apply(service(), crashing("crasher", 3))
    assert status == 422, reply
    outcomes = {i["key"]: (i["outcome"], i["reason"]) for i in reply["applied"]}
    assert outcomes["default/helloworld-go"] == ("served", "")
    state, reason = outcomes["default/crasher"]
    assert state == "failed"
    assert reason.startswith("revision crasher-00001: container exited with code 3"), reason

    async def reported() -> bool:
        _, services = await client.read("/v1/services")
        crasher = next(s for s in services if s["name"] == "crasher")
        return crasher["ready"] == "False" and crasher["reason"] == "RevisionFailed"

    await eventually(reported, 10, "the Service's status to say why", interval=0.2)


async def test_apply_wait_fails_past_the_progress_deadline(client: Client) -> None:
    never = service("never")
    template = never["spec"]["template"]
    template["metadata"]["annotations"]["serving.knative.dev/progress-deadline"] = "2s"
    # A process that never listens: its TCP readiness probe never succeeds.
    container = template["spec"]["containers"][0]
    container["command"] = ["python3", "-c", "import time; time.sleep(600)"]
    container.pop("args", None)
    status, reply = await client.apply(never)
    assert status == 422, reply
    (item,) = reply["applied"]
    assert item["outcome"] == "failed"
    assert "progress deadline of 2s" in item["reason"], item


def test_get_config_in_the_cli_table_and_as_configmaps() -> None:
    """`wakegate get config` is a table of every key; -o yaml shows v1 ConfigMaps."""
    from wakegate.reconciler.local.config import Baseline, configmap_objects, resolve, rows

    settings = resolve(Baseline(), {"config-domain": {"apps.test": ""}})
    table = rows(settings)
    assert {"namespace": "knative-serving", "name": "config-domain", "key": "apps.test",
            "value": "", "source": "ConfigMap"} in table  # fmt: skip
    objects = {o["metadata"]["name"]: o for o in configmap_objects(settings)}
    assert objects["config-autoscaler"]["data"]["stable-window"] == "60s"
    assert objects["config-domain"]["data"] == {"apps.test": ""}
    assert yaml.safe_load(yaml.safe_dump(objects["config-network"]))["kind"] == "ConfigMap"
