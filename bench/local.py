"""Measuring the local stack: the whole stack in this process, its loopback API, and a
timeline of what happened on it.

    timeline = Timeline()
    with pod_log(timeline):
        async with local_stack(tmp, timeline, autoscaler=AutoscalerConfig()) as (stack, api):
            await api.apply(manifest("hello"))

`local_stack()` marks every reconcile on the timeline, `pod_log()` every pod spawned and
ready; a benchmark adds hooks of its own with `instrument=`.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from bench.stack import HELLO_APP
from tests.support.backends import free_port
from wakegate.autoscaler.config import AutoscalerConfig
from wakegate.stack import LocalStack, StackConfig

EXAMPLE = HELLO_APP.parent
SEED: dict[str, Any] = yaml.safe_load((EXAMPLE / "helloworld-go.yaml").read_text())
DOMAIN = "example.com"
NAMESPACE = "default"


# --- Services ----------------------------------------------------------------------------


def manifest(name: str, annotations: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The seed's hello-world Service (target 10) named `name`, with extra template
    annotations."""
    doc = copy.deepcopy(SEED)
    doc["metadata"]["name"] = name
    template = doc["spec"]["template"]["metadata"]
    template["annotations"] = {**template.get("annotations", {}), **(annotations or {})}
    return doc


def dump(docs: Sequence[dict[str, Any]]) -> str:
    return "---\n".join(yaml.safe_dump(d) for d in docs)


def host(name: str) -> str:
    return f"{name}.{NAMESPACE}.{DOMAIN}"


def service_of(revision_or_pod: str, dashes: int = 1) -> str:
    """`new-1-00001` (dashes=1) or `new-1-00001-bcdfg` (dashes=2) → `new-1`."""
    return revision_or_pod.rsplit("-", dashes)[0]


# --- the loopback API --------------------------------------------------------------------


class Api:
    """The stack's loopback API, for everything that is not timed."""

    def __init__(self, session: aiohttp.ClientSession, port: int, token: str) -> None:
        self.session = session
        self.base = f"http://127.0.0.1:{port}"
        self.auth = {"Authorization": f"Bearer {token}"}

    async def put(
        self, docs: Sequence[dict[str, Any]], **query: str
    ) -> tuple[int, dict[str, Any], float]:
        """PUT the manifests: status, reply, seconds the API took."""
        t0 = time.monotonic()
        params = {"dir": str(EXAMPLE), **query}
        async with self.session.put(
            self.base + "/v1/manifests", params=params, data=dump(docs), headers=self.auth
        ) as r:
            return r.status, await r.json(), time.monotonic() - t0

    async def apply(self, *docs: dict[str, Any]) -> None:
        """Apply Services and wait until the gateway serves them."""
        status, reply, _ = await self.put(docs, wait="1", timeout="60")
        if status != 200 or not reply.get("served"):
            raise RuntimeError(f"apply failed: {status} {reply}")

    async def delete(self, name: str, *, missing_ok: bool = False) -> None:
        url = f"{self.base}/v1/services/{NAMESPACE}/{name}"
        async with self.session.delete(url, headers=self.auth) as r:
            if r.status != 200 and not (missing_ok and r.status == 404):
                raise RuntimeError(f"delete {name} failed: {r.status} {await r.text()}")

    async def revisions(self) -> list[dict[str, Any]]:
        async with self.session.get(self.base + "/v1/revisions") as r:
            revisions: list[dict[str, Any]] = await r.json()
            return revisions

    async def pods(self) -> list[dict[str, Any]]:
        async with self.session.get(self.base + "/v1/pods") as r:
            pods: list[dict[str, Any]] = await r.json()
            return pods

    async def ready(self, revision_name: str) -> list[dict[str, Any]]:
        return [p for p in await self.pods() if p["revision"] == revision_name and p["ready"]]


# --- the timeline ------------------------------------------------------------------------


@dataclass
class Timeline:
    """Stack events per Service (monotonic ns), and what the stack reported along the way."""

    events: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    reconciles: list[tuple[int, float]] = field(default_factory=list)
    """(started, seconds) of every batch of reconciles."""
    batches: list[tuple[int, int, float]] = field(default_factory=list)
    """(started, Services, seconds) of every batch of reconciles."""
    app_start_s: list[tuple[int, str, float]] = field(default_factory=list)
    """(when, service, spawn → ready) as the runtime logged it."""
    desired: list[tuple[int, str, int]] = field(default_factory=list)
    """(when, service, pods) each time the autoscaler changed its mind."""

    def mark(self, event: str, service: str) -> None:
        self.events.setdefault((event, service), []).append(time.monotonic_ns())

    def first(self, event: str, service: str, since: int) -> int | None:
        return next((t for t in self.events.get((event, service), ()) if t >= since), None)

    def reconcile_cost(self, since: int, until: int) -> tuple[int, float]:
        """How many reconciles started in [since, until) and their mean seconds."""
        took = [s for t, s in self.reconciles if since <= t < until]
        return len(took), sum(took) / len(took) if took else 0.0


class _PodLog(logging.Handler):
    """Turns the runtime's `pod … started` and `pod … ready in` lines into timeline events."""

    def __init__(self, timeline: Timeline) -> None:
        super().__init__(logging.INFO)
        self.timeline = timeline

    def emit(self, record: logging.LogRecord) -> None:
        message, args = str(record.msg), record.args
        if not isinstance(args, tuple) or not args:
            return
        service = service_of(str(args[0]), 2)
        if message.startswith("pod %s started"):
            self.timeline.mark("spawned", service)
        elif message.startswith("pod %s ready in"):
            self.timeline.mark("ready", service)
            if len(args) > 1:
                startup_ms = float(args[1])  # type: ignore[arg-type]
                self.timeline.app_start_s.append((time.monotonic_ns(), service, startup_ms / 1000))


@contextlib.contextmanager
def pod_log(timeline: Timeline) -> Iterator[None]:
    """Feed the runtime's INFO lines to `timeline`; its warnings still print."""
    runtime = logging.getLogger("wakegate.runtime")
    level, propagate = runtime.level, runtime.propagate
    handlers = [_PodLog(timeline), logging.StreamHandler()]
    handlers[1].setLevel(logging.WARNING)
    for handler in handlers:
        runtime.addHandler(handler)
    runtime.setLevel(logging.INFO)
    runtime.propagate = False
    try:
        yield
    finally:
        for handler in handlers:
            runtime.removeHandler(handler)
        runtime.setLevel(level)
        runtime.propagate = propagate


# --- the stack ---------------------------------------------------------------------------


def mark_reconciles(stack: LocalStack, timeline: Timeline) -> None:
    """Wrap the serving reconciler so each reconcile marks `timeline` when it starts and
    records how long its batch took; behaviour is unchanged."""
    serving = stack.serving
    assert serving is not None
    reconcile_batch = serving.reconcile_batch

    async def reconciling(keys: Sequence[str]) -> None:
        started = time.monotonic_ns()
        for key in keys:
            timeline.mark("reconcile", key.partition("/")[2])
        try:
            await reconcile_batch(keys)
        finally:
            took = (time.monotonic_ns() - started) / 1e9
            timeline.reconciles.append((started, took))
            timeline.batches.append((started, len(keys), took))

    serving.reconcile_batch = reconciling  # type: ignore[method-assign]


@contextlib.asynccontextmanager
async def local_stack(
    data_dir: Path,
    timeline: Timeline,
    *,
    autoscaler: AutoscalerConfig,
    allow_zero_initial_scale: bool = False,
    instrument: Callable[[LocalStack, Timeline], None] | None = None,
) -> AsyncIterator[tuple[LocalStack, Api]]:
    """The local stack on free loopback ports with state in `data_dir`, its reconciles
    marked on `timeline` and `instrument`'s hooks installed, and a client of its API."""
    config = StackConfig(
        data_dir=data_dir,
        domain=DOMAIN,
        port=free_port(),
        internal_port=free_port(),
        tls_port=free_port(),
        xds_port=0,
        api_port=0,
        autoscaler=autoscaler,
        allow_zero_initial_scale=allow_zero_initial_scale,
    )
    stack = LocalStack(config)
    try:
        await stack.start()
        mark_reconciles(stack, timeline)
        if instrument is not None:
            instrument(stack, timeline)
        async with aiohttp.ClientSession() as session:
            yield stack, Api(session, stack.api_port, stack.api_token)
    finally:
        await stack.stop()
