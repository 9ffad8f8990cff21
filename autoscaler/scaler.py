"""The autoscaler loop: gateway load samples → KPA decisions, per revision.

The metrics are each revision's load at the gateway (`gateway_stats`): the in-flight
requests of the revision's cluster, sampled every `sample_interval_s` and filed as the
average over that interval (the `concurrency` metric), and the requests it sent in that
interval (the `rps` metric). Every request to a revision crosses that cluster once,
whether it goes to the pods (serve mode) or to the activator (proxy mode), so one
source counts each request exactly once.

A sample that fails (the gateway is restarting, its admin endpoint does not answer) is
no data, not zero load: nothing is filed, and a revision whose stable window holds no
data keeps its last decision. The activator's poke (a request is waiting at a revision
with no pod) takes a sample at once and ticks that revision, so scale-from-zero starts
on the first request; only if that sample fails is the poke itself filed as the load.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from wakegate.autoscaler.config import AutoscalerConfig, RevisionScaling
from wakegate.autoscaler.decider import DeciderState, Decision, Mode, decide
from wakegate.autoscaler.gateway_stats import RevisionLoad
from wakegate.autoscaler.metrics import RevisionMetrics

log = logging.getLogger(__name__)

Sampler = Callable[[], Awaitable[Mapping[str, RevisionLoad]]]
"""Revision key → its load at the gateway right now."""
DecisionCallback = Callable[[str, Decision], None]
GATEWAY = "gateway"
POKE = "activator-poke"


@dataclass
class Tracked:
    scaling: RevisionScaling
    state: DeciderState
    routed: bool = True
    ready_pods: int = 0
    activator_in_path: bool = False
    decision: Decision | None = None


class Autoscaler:
    def __init__(
        self,
        config: AutoscalerConfig,
        sample: Sampler,
        on_decision: DecisionCallback,
        *,
        sample_interval_s: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.sample = sample
        self.on_decision = on_decision
        self.sample_interval_s = sample_interval_s
        self.clock = clock
        self.metrics = RevisionMetrics()
        self._revisions: dict[str, Tracked] = {}
        self._totals: dict[str, float] = {}
        """Revision key → its cluster's request counter at the last sample."""
        self._last_sample: float | None = None
        self._sample_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._pokes: set[asyncio.Task[None]] = set()

    # --- what the reconciler tells it ----------------------------------------------------

    def track(self, key: str, scaling: RevisionScaling, *, routed: bool, ready_pods: int) -> None:
        tracked = self._revisions.get(key)
        if tracked is None:
            state = DeciderState.start(scaling, self.clock(), ready_pods)
            self._revisions[key] = Tracked(scaling, state, routed, ready_pods)
        else:
            tracked.scaling, tracked.routed, tracked.ready_pods = scaling, routed, ready_pods

    def forget(self, key: str) -> None:
        self._revisions.pop(key, None)
        self._totals.pop(key, None)
        self.metrics.forget(key)

    def set_ready(self, key: str, ready_pods: int) -> None:
        if (tracked := self._revisions.get(key)) is not None:
            tracked.ready_pods = ready_pods

    def set_activator_in_path(self, key: str, in_path: bool) -> None:
        if (tracked := self._revisions.get(key)) is not None:
            tracked.activator_in_path = in_path

    def poke(self, key: str, waiting: float) -> None:
        """Requests wait at the activator for a revision: sample, and decide now."""
        if key not in self._revisions:
            return
        task = asyncio.create_task(self._poked(key, waiting))
        self._pokes.add(task)
        task.add_done_callback(self._pokes.discard)

    async def _poked(self, key: str, waiting: float) -> None:
        if not await self.sample_once():
            self.metrics.record(self.clock(), key, waiting, waiting, source=POKE)
        if key in self._revisions:
            self._tick(key)

    # --- what it tells the reconciler ----------------------------------------------------

    def desired(self, key: str) -> int | None:
        tracked = self._revisions.get(key)
        return tracked.state.scale if tracked is not None else None

    def mode(self, key: str) -> Mode | None:
        """The revision's mode; None before the first decision (keep the activator in)."""
        tracked = self._revisions.get(key)
        if tracked is None or tracked.decision is None:
            return None
        return tracked.decision.mode

    def decision(self, key: str) -> Decision | None:
        tracked = self._revisions.get(key)
        return tracked.decision if tracked is not None else None

    # --- the loop ------------------------------------------------------------------------

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._sampling(), name="autoscaler-sampling"),
            asyncio.create_task(self._ticking(), name="autoscaler-ticks"),
        ]

    async def stop(self) -> None:
        for task in [*self._tasks, *self._pokes]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._pokes, return_exceptions=True)

    async def _sampling(self) -> None:
        while True:
            await asyncio.sleep(self.sample_interval_s)
            await self.sample_once()

    async def sample_once(self) -> bool:
        """Take one sample from the gateway and file it; False when it failed."""
        async with self._sample_lock:
            try:
                load = await self.sample()
            except Exception as exc:  # the gateway restarting is not fatal: no data
                log.debug("load sample failed: %s", exc)
                # What the counters gained meanwhile is spread over no interval.
                self._last_sample = None
                self._totals.clear()
                return False
            now = self.clock()
            interval = self.sample_interval_s
            if self._last_sample is not None:
                interval = max(1e-3, now - self._last_sample)
            self._last_sample = now
            for key in self._revisions:
                current = load.get(key, RevisionLoad(0.0, 0.0))
                previous = self._totals.get(key)
                self._totals[key] = current.requests
                if previous is None:
                    requests = 0.0
                elif current.requests >= previous:
                    requests = current.requests - previous
                else:  # the cluster was re-created and its counter started over
                    requests = current.requests
                self.metrics.record(
                    now,
                    key,
                    float(current.in_flight),
                    requests,
                    interval_s=interval,
                    source=GATEWAY,
                )
            return True

    async def _ticking(self) -> None:
        while True:
            await asyncio.sleep(self.config.tick_interval_s)
            for key in list(self._revisions):
                self._tick(key)

    def _tick(self, key: str) -> None:
        tracked = self._revisions[key]
        now = self.clock()
        scaling = tracked.scaling
        observed = self.metrics.observe(
            now,
            key,
            scaling.stable_window_s,
            scaling.panic_window_s,
            metric=scaling.metric,
            algorithm=scaling.aggregation,
        )
        decision = decide(
            observed,
            scaling,
            tracked.state,
            now,
            tracked.ready_pods,
            reachable=tracked.routed,
            activator_in_path=tracked.activator_in_path,
            tick_s=self.config.tick_interval_s,
        )
        previous, tracked.decision, tracked.state = tracked.decision, decision, decision.state
        if (
            previous is None
            or previous.desired != decision.desired
            or previous.mode != decision.mode
        ):
            log.info("%s: %s", key, decision.reason)
            self.on_decision(key, decision)
