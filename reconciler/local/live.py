"""The local stack's state as one document, sampled every second, for the live view.

Each tick reads the Services, revisions and pods of the local reconciler, the
autoscaler's last decision per revision, every gateway's xDS state, the gateway's
request counters (Envoy admin `upstream_rq_total` per revision cluster, for the request
rate) and the activator's cold-start metrics, records one timeline point per
revision (see `timeline`), and hands subscribers an update: the current state plus
the points and events that are new since the previous tick. A new subscriber starts
from `document()`, the same state with the whole timeline.

Everything here only reads; the view built on it cannot change anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Iterator, Mapping
from typing import Any

import aiohttp

from wakegate.activator.coldstart import ColdStartFigures, parse_cold_starts
from wakegate.reconciler.local.services import LocalServing
from wakegate.reconciler.local.timeline import Point, Timeline
from wakegate.serving.conditions import condition_of
from wakegate.xds.controlplane import ControlPlane
from wakegate.xds.status import gateway_rows

log = logging.getLogger(__name__)

_RQ_TOTAL = ".upstream_rq_total"
RQ_TOTAL_PATH = "/stats?usedonly&filter=" + r"^cluster\..*\.upstream_rq_total$"
SUBSCRIBER_BACKLOG = 30
"""Updates a subscriber may fall behind by before it is dropped (its client reconnects)."""


def parse_request_totals(text: str, port_suffix: str = "_80") -> dict[str, float]:
    """`cluster.<ns>/<revision>_80.upstream_rq_total: N` lines → {"ns/revision": N}
    (Envoy writes the cluster name's ':' as '_' in stat names)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.partition(": ")
        if not (name.startswith("cluster.") and name.endswith(_RQ_TOTAL)):
            continue
        cluster = name[len("cluster.") : -len(_RQ_TOTAL)]
        if cluster.endswith(port_suffix) and "/" in cluster:
            key = cluster[: -len(port_suffix)]
            out[key] = out.get(key, 0.0) + float(value)
    return out


class LiveState:
    def __init__(
        self,
        control_plane: ControlPlane,
        serving: LocalServing | None,
        *,
        gateway_admin: str | None = None,
        gateway_admin_socket: str | None = None,
        activator: str | None = None,
        interval_s: float = 1.0,
        keep_s: float = 600.0,
    ) -> None:
        """`gateway_admin` is the Envoy admin URL (reached through the unix socket
        `gateway_admin_socket` when given), `activator` the activator's base URL."""
        self.cp = control_plane
        self.serving = serving
        self.gateway_admin = gateway_admin
        self.gateway_admin_socket = gateway_admin_socket
        self.activator = activator
        self.interval_s = interval_s
        self.timeline = Timeline(keep_s)
        self.cold_starts: Mapping[tuple[str, str], ColdStartFigures] = {}
        self._totals: dict[str, float] = {}
        self._totals_at = 0.0
        self._last_tick: float | None = None
        self._subscribers: set[asyncio.Queue[dict[str, Any] | None]] = set()
        self._session: aiohttp.ClientSession | None = None
        self._admin_session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None

    # --- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        timeout = aiohttp.ClientTimeout(total=2)
        self._session = aiohttp.ClientSession(timeout=timeout)
        if self.gateway_admin_socket is not None:
            connector = aiohttp.UnixConnector(path=self.gateway_admin_socket)
            self._admin_session = aiohttp.ClientSession(connector=connector, timeout=timeout)
        self._task = asyncio.create_task(self._run(), name="wakegate-live")

    async def stop(self) -> None:
        """Stop sampling and end every subscription."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for queue in list(self._subscribers):
            self._end(queue)
        for session in (self._session, self._admin_session):
            if session is not None:
                await session.close()

    @contextlib.contextmanager
    def subscribe(self) -> Iterator[asyncio.Queue[dict[str, Any] | None]]:
        """A queue of updates, one per tick; None when the subscription ends."""
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(SUBSCRIBER_BACKLOG + 1)
        self._subscribers.add(queue)
        try:
            yield queue
        finally:
            self._subscribers.discard(queue)

    def _end(self, queue: asyncio.Queue[dict[str, Any] | None]) -> None:
        self._subscribers.discard(queue)
        while not queue.empty():
            queue.get_nowait()
        queue.put_nowait(None)

    # --- sampling ------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:
                log.exception("live view sample failed")
            await asyncio.sleep(self.interval_s)

    async def _get(self, url: str, *, admin: bool = False) -> str | None:
        session = self._admin_session if admin and self._admin_session else self._session
        if session is None or session.closed:
            return None
        try:
            async with session.get(url) as resp:
                return await resp.text() if resp.status == 200 else None
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.debug("GET %s: %s", url, exc)
            return None

    async def gateway_config_dump(self) -> dict[str, Any] | None:
        """The local gateway's own Envoy `/config_dump` (with endpoints), None if it has
        no admin or does not answer."""
        if self.gateway_admin is None:
            return None
        text = await self._get(self.gateway_admin + "/config_dump?include_eds", admin=True)
        try:
            return json.loads(text) if text else None
        except ValueError:
            return None

    async def activator_metrics(self) -> str:
        """The activator's Prometheus exposition text, "" without an activator."""
        if self.activator is None:
            return ""
        return await self._get(self.activator + "/metrics") or ""

    async def _rates(self, now: float) -> dict[str, float] | None:
        """Requests per second per revision since the previous tick, from Envoy's
        counters; None until there are two readings to compare."""
        if self.gateway_admin is None:
            return None
        text = await self._get(self.gateway_admin + RQ_TOTAL_PATH, admin=True)
        if text is None:
            return None
        totals = parse_request_totals(text)
        before, elapsed = self._totals, now - self._totals_at
        first = not self._totals_at
        self._totals, self._totals_at = totals, now
        if first or elapsed <= 0:
            return None
        # A counter that went down belongs to a gateway that restarted: count from 0.
        return {
            key: (total - before.get(key, 0.0) if total >= before.get(key, 0.0) else total)
            / elapsed
            for key, total in totals.items()
        }

    async def tick(self) -> dict[str, Any]:
        """Take one sample, hand subscribers the update, and return it (empty when
        nobody subscribes)."""
        now = time.time()
        rates = await self._rates(now)
        text = await self.activator_metrics()
        if text:
            self.cold_starts = parse_cold_starts(text)
        serving = self.serving
        if serving is not None:
            ready_pods: dict[tuple[str, str], int] = {}
            for p in serving.pods():
                if p["ready"]:
                    owner = (p["namespace"], p["revision"])
                    ready_pods[owner] = ready_pods.get(owner, 0) + 1
            seen = set()
            for revision in serving.revisions():
                seen.add(revision.key)
                scaling = serving.scaling_status(revision)
                cold = self.cold_starts.get((revision.namespace, revision.name))
                ready = ready_pods.get((revision.namespace, revision.name), 0)
                self.timeline.record(
                    revision.key,
                    Point(
                        t=now,
                        concurrency=(
                            scaling.get("panicLoad")
                            if scaling.get("metric") == "concurrency"
                            else None
                        ),
                        rps=None if rates is None else rates.get(revision.key, 0.0),
                        desired=scaling.get("desired"),
                        ready=ready,
                        panicking=bool(scaling.get("panicking")),
                        waited=cold.waited if cold is not None else 0,
                    ),
                )
            self.timeline.forget(seen)
        # The document reads every Service: only built when someone is watching.
        update = self.document(since=self._last_tick) if self._subscribers else {}
        self._last_tick = now
        for queue in list(self._subscribers):
            if queue.qsize() >= SUBSCRIBER_BACKLOG:
                self._end(queue)
            else:
                queue.put_nowait(update)
        return update

    # --- the document --------------------------------------------------------------

    def revision_rows(self) -> list[dict[str, Any]]:
        """Every revision with its pods, routing, the autoscaler's view and cold starts."""
        serving = self.serving
        if serving is None:
            return []
        pods: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for pod in serving.pods():
            pods.setdefault((pod["namespace"], pod["revision"]), []).append(pod)
        statuses = {
            f"{service.namespace}/{service.name}": status for service, status in serving.services()
        }
        out = []
        for revision in serving.revisions():
            own = pods.get((revision.namespace, revision.name), [])
            traffic = statuses.get(f"{revision.namespace}/{revision.service}", {}).get(
                "traffic", []
            )
            percent = sum(
                int(t.get("percent") or 0)
                for t in traffic
                if t.get("revisionName") == revision.name
            )
            cold = self.cold_starts.get((revision.namespace, revision.name))
            out.append(
                {
                    "namespace": revision.namespace,
                    "name": revision.name,
                    "service": revision.service,
                    "generation": revision.generation,
                    "createdAt": (revision.created_at.isoformat() if revision.created_at else None),
                    "ready": serving.is_ready(revision),
                    "failed": serving.failure(revision),
                    "routed": any(t.get("revisionName") == revision.name for t in traffic),
                    "percent": percent,
                    "pods": len(own),
                    "readyPods": sum(1 for p in own if p["ready"]),
                    "autoscaler": serving.scaling_status(revision),
                    "coldStarts": cold.to_dict() if cold is not None else None,
                }
            )
        return out

    def _services(self) -> list[dict[str, Any]]:
        if self.serving is None:
            return []
        out = []
        for service, status in self.serving.services():
            ready = condition_of(status, "Ready")
            out.append(
                {
                    "namespace": service.namespace,
                    "name": service.name,
                    "url": status.get("url", ""),
                    "ready": ready.get("status", "Unknown"),
                    "reason": ready.get("reason", ""),
                    "message": ready.get("message", ""),
                    "latestCreatedRevisionName": status.get("latestCreatedRevisionName", ""),
                    "latestReadyRevisionName": status.get("latestReadyRevisionName", ""),
                    "traffic": status.get("traffic", []),
                }
            )
        return out

    def _pods(self) -> list[dict[str, Any]]:
        if self.serving is None:
            return []
        keep = (
            "name",
            "namespace",
            "revision",
            "phase",
            "ready",
            "restarts",
            "address",
            "port",
            "startedAt",
            "reason",
        )
        return [{k: p.get(k) for k in keep} for p in self.serving.pods()]

    def document(self, since: float | None = None) -> dict[str, Any]:
        """The current state; the timeline's points and events after `since` (all of
        them when None)."""
        last = self.cp.last
        snapshot = last.version if last else None
        series = {
            key: {
                "points": [p.to_list() for p in self.timeline.points(key, since)],
                "events": [e.to_list() for e in self.timeline.events(key, since)],
            }
            for key in self.timeline.keys()
        }
        return {
            "time": time.time(),
            "full": since is None,
            "snapshot": snapshot,
            "services": self._services(),
            "revisions": self.revision_rows(),
            "pods": self._pods(),
            "gateways": gateway_rows(self.cp.server.nodes(), self.cp.server.current()),
            "series": series,
            "pointFields": ["t", "concurrency", "rps", "desired", "ready", "panicking"],
        }
