"""Cold-start metrics of the activator, as a real process with real backends."""

from __future__ import annotations

import asyncio
import math

from tests.test_activator import NS, activator, backends, endpoints
from wakegate.activator.coldstart import ColdStartFigures, histogram_quantile, parse_cold_starts


async def figures(stack: object, revision: str) -> ColdStartFigures | None:
    status, body, _ = await stack.request(None, "/metrics")  # type: ignore[attr-defined]
    assert status == 200
    return parse_cold_starts(body.decode()).get((NS, revision))


async def test_a_request_held_at_zero_is_a_cold_start_until_its_first_byte() -> None:
    async with activator() as stack, backends("blue") as (blue,):
        assert await figures(stack, "hello-00001") is None
        held = asyncio.create_task(stack.request("hello-00001", "/?sleep=300"))
        await asyncio.wait_for(stack.poked.wait(), 5.0)
        await asyncio.sleep(0.4)
        stack.service.set_endpoints(NS, "hello-00001", endpoints(blue))
        status, _, _ = await asyncio.wait_for(held, 10.0)
        assert status == 200
        one = await figures(stack, "hello-00001")
        assert one is not None
        assert (one.waited, one.count) == (1, 1)
        # Held 0.4 s, then the pod answers after 0.3 s: both count, up to the first byte.
        assert one.latest_seconds is not None and one.latest_seconds >= 0.7
        assert one.total_seconds == one.latest_seconds
        # One cold start is its own median, not a bucket's interpolation.
        assert one.quantile(0.5) == one.quantile(0.95) == one.latest_seconds

        # With a ready pod a request does not wait and is no cold start.
        status, _, _ = await stack.request("hello-00001")
        assert status == 200
        assert await figures(stack, "hello-00001") == one


async def test_a_wait_that_times_out_counts_as_waited_without_a_time() -> None:
    async with activator("--hold-timeout", "0.3") as stack:
        status, _, _ = await stack.request("hello-00002")
        assert status == 504
        two = await figures(stack, "hello-00002")
        assert two is not None
        assert (two.waited, two.count, two.latest_seconds) == (1, 0, None)
        assert two.quantile(0.5) is None


async def test_fifty_requests_held_at_zero_are_fifty_cold_starts() -> None:
    async with activator() as stack, backends("blue") as (blue,):
        held = [asyncio.create_task(stack.request("hello-00003")) for _ in range(50)]
        await asyncio.wait_for(stack.poked.wait(), 5.0)
        await asyncio.sleep(0.3)
        stack.service.set_endpoints(NS, "hello-00003", endpoints(blue))
        assert [r[0] for r in await asyncio.gather(*held)] == [200] * 50
        many = await figures(stack, "hello-00003")
        assert many is not None and (many.waited, many.count) == (50, 50)
        p50, p95 = many.quantile(0.5), many.quantile(0.95)
        assert p50 is not None and p95 is not None and 0 < p50 <= p95
        assert many.to_dict()["count"] == 50


def test_histogram_quantile_interpolates_like_prometheus() -> None:
    # Prometheus' histogram_quantile: linear within the bucket holding the rank, the
    # lowest bucket starting at 0, and +Inf answered by the highest finite bound.
    buckets = [(0.1, 10), (0.5, 30), (1.0, 40), (math.inf, 40)]
    assert histogram_quantile(0.5, buckets) == 0.1 + 0.4 * (20 - 10) / (30 - 10)
    assert histogram_quantile(0.25, buckets) == 0.1 * 10 / 10
    assert histogram_quantile(0.05, buckets) == 0.1 * 2 / 10
    assert histogram_quantile(1.0, buckets) == 1.0
    assert histogram_quantile(0.99, [(1.0, 1), (2.0, 1), (math.inf, 5)]) == 2.0
    assert histogram_quantile(0.5, [(1.0, 0), (math.inf, 0)]) is None
