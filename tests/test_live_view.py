"""The live view in a real headless Chromium against the local stack: real Envoy, real
pods, real load from `hey`. The page must show a Service, its revision and its pods,
and follow a scale-up without a reload."""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from tests.support.browser import chromium
from tests.support.waiting import eventually
from tests.test_local_serving import HOST, Client, service, stack_config
from wakegate.autoscaler.config import AutoscalerConfig
from wakegate.stack import LocalStack

pytestmark = pytest.mark.envoy


@pytest_asyncio.fixture
async def client(tmp_path: Path) -> AsyncIterator[Client]:
    config = stack_config(tmp_path / "data")
    config.autoscaler = AutoscalerConfig(
        stable_window_s=6.0, scale_to_zero_grace_period_s=2.0, tick_interval_s=1.0
    )
    stack = LocalStack(config)
    await stack.start()
    try:
        yield Client(stack)
    finally:
        await stack.stop()


async def until(check: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """Poll a blocking browser call off the event loop (the stack runs on it)."""
    return await eventually(
        lambda: asyncio.to_thread(check), timeout_s, f"the view showing {what}", interval=0.2
    )


async def test_the_view_shows_a_service_and_follows_a_scale_up_without_reload(
    client: Client, tmp_path: Path
) -> None:
    hey = shutil.which("hey")
    assert hey, "the load generator `hey` is required (Debian package hey)"
    status, reply = await client.apply(service())
    assert status == 200 and reply["served"], reply

    with chromium(tmp_path / "profile") as driver:
        js = driver.execute_script
        await asyncio.to_thread(driver.get, client.api + "/")
        await until(
            lambda: js(
                'return document.querySelector(\'[data-service="default/helloworld-go"]'
                ' [data-revision="helloworld-go-00001"]\') !== null'
                " && document.querySelectorAll('[data-pod][data-ready=\"true\"]').length === 1"
            ),
            20,
            "the Service, its revision and its ready pod",
        )
        card = await asyncio.to_thread(
            js,
            "return document.querySelector('[data-service=\"default/helloworld-go\"]').innerText",
        )
        assert f"http://{HOST}" in card and "Ready" in card and "100%" in card, card
        gateway = await asyncio.to_thread(
            js, "return document.querySelector('#gateways tbody tr').innerText"
        )
        assert "connected" in gateway and "current" in gateway, gateway
        connection = "return document.getElementById('connection').textContent"
        assert await asyncio.to_thread(js, connection) == "live"

        # Mark this page: a reload would lose the mark.
        await asyncio.to_thread(js, "window.viewNotReloaded = true")
        load = await asyncio.create_subprocess_exec(
            hey, "-z", "30s", "-c", "40", "-host", HOST, client.gateway + "/",
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            pods = await until(
                lambda: js(
                    "const n = document.querySelectorAll('[data-pod][data-ready=\"true\"]')"
                    ".length; return n >= 3 ? n : 0"
                ),
                30,
                "a scale-up to 3 or more ready pods",
            )
            assert await asyncio.to_thread(js, "return window.viewNotReloaded === true")
            # The chart has drawn the load and the pods.
            drawn = await asyncio.to_thread(
                js,
                "const box = document.querySelector('[data-revision-key=\"default/"
                "helloworld-go-00001\"]'); return ['concurrency', 'rps', 'desired', 'ready']"
                ".filter(c => box.querySelector('svg path.' + c) !== null)",
            )
            assert drawn == ["concurrency", "rps", "desired", "ready"], drawn
            shot = tmp_path / "live-view.png"
            assert await asyncio.to_thread(driver.save_screenshot, str(shot))
            print(f"live view with {pods} ready pods under load: screenshot {shot}")
        finally:
            # hey stops at SIGINT and still prints its report.
            load.send_signal(signal.SIGINT)
            out, _ = await load.communicate()
        codes = dict(re.findall(r"\[(\d{3})\]\s+(\d+) responses", out.decode()))
        assert set(codes) == {"200"}, out.decode()

        # Everything the page loaded came from the API's own origin.
        origins = await asyncio.to_thread(
            js,
            "return performance.getEntriesByType('resource').map(e => new URL(e.name).origin)",
        )
        assert set(origins) <= {client.api}, origins


async def test_the_view_only_reads_and_fetches_nothing_from_elsewhere(client: Client) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(client.api + "/") as resp:
            assert resp.status == 200
            page = await resp.text()
            policy = resp.headers["Content-Security-Policy"]
        assert "default-src 'none'" in policy and "connect-src 'self'" in policy
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        # Every asset the page names is served by the API itself, under /ui/.
        assets = re.findall(r'(?:src|href)="([^"]+)"', page)
        assert assets and all(a.startswith("/ui/") for a in assets), assets
        for asset in assets:
            async with session.get(client.api + asset) as resp:
                assert resp.status == 200, asset
                assert "http://" not in await resp.text() or asset.endswith(".js")
        async with session.get(client.api + "/ui/../api.py") as resp:
            assert resp.status == 404
        # Nothing changes state there: a POST without the stack's token is refused
        # before any route, and with it the page has no POST to offer.
        async with session.post(client.api + "/") as resp:
            assert resp.status == 401
        token = {"Authorization": f"Bearer {client.stack.api_token}"}
        async with session.post(client.api + "/", headers=token) as resp:
            assert resp.status == 405
        # The stack's /metrics carries the activator's cold-start metrics after its own.
        async with session.get(client.api + "/metrics") as resp:
            metrics = await resp.text()
        assert "# TYPE wakegate_xds_pushes_total counter" in metrics
        assert "# TYPE wakegate_cold_start_seconds histogram" in metrics
