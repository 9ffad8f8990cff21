"""The autoscaler loop: gateway concurrency samples → KPA decisions, per revision.

The metric is each revision's in-flight request count at the gateway: Envoy's
`upstream_rq_active` gauge of the revision's cluster, sampled every
`sample_interval_s` and filed as the average over that interval. Every request to a
revision crosses that cluster whether it goes to the pods (serve mode) or to the
activator (proxy mode), so one source counts each request exactly once. The
activator's poke (a request is waiting at a revision with no pod) files its held
count and ticks that revision at once, so scale-from-zero starts on the first request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from wakegate.autoscaler.config import AutoscalerConfig, RevisionScaling
from wakegate.autoscaler.decider import DeciderState, Decision, Mode, decide
from wakegate.autoscaler.metrics import RevisionMetrics

log = logging.getLogger(__name__)

Sampler = Callable[[], Awaitable[Mapping[str, float]]]
"""Revision key → in-flight requests right now."""
DecisionCallback = Callable[[str, Decision], None]


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
        self._tasks: list[asyncio.Task[None]] = []

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
        self.metrics.forget(key)

    def set_ready(self, key: str, ready_pods: int) -> None:
        if (tracked := self._revisions.get(key)) is not None:
            tracked.ready_pods = ready_pods

    def set_activator_in_path(self, key: str, in_path: bool) -> None:
        if (tracked := self._revisions.get(key)) is not None:
            tracked.activator_in_path = in_path

    def poke(self, key: str, waiting: float) -> None:
        """Requests wait at the activator for a revision: count them and decide now."""
        if key in self._revisions:
            self.metrics.record(self.clock(), key, waiting, source="activator-poke")
            self._tick(key)

    # --- what it tells the reconciler ----------------------------------------------------

    def desired(self, key: str) -> int | None:
        tracked = self._revisions.get(key)
        return tracked.state.scale if tracked is not None else None

    def mode(self, key: str) -> Mode | None:
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
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _sampling(self) -> None:
        while True:
            await asyncio.sleep(self.sample_interval_s)
            try:
                in_flight = await self.sample()
            except Exception as exc:  # the gateway restarting is not fatal
                log.debug("concurrency sample failed: %s", exc)
                continue
            now = self.clock()
            for key in self._revisions:
                self.metrics.record(
                    now,
                    key,
                    float(in_flight.get(key, 0.0)),
                    interval_s=self.sample_interval_s,
                    source="gateway",
                )

    async def _ticking(self) -> None:
        while True:
            await asyncio.sleep(self.config.tick_interval_s)
            for key in list(self._revisions):
                self._tick(key)

    def _tick(self, key: str) -> None:
        tracked = self._revisions[key]
        now = self.clock()
        scaling = tracked.scaling
        observed = self.metrics.observe(now, key, scaling.stable_window_s, scaling.panic_window_s)
        decision = decide(
            observed,
            scaling,
            tracked.state,
            now,
            tracked.ready_pods,
            reachable=tracked.routed,
            activator_in_path=tracked.activator_in_path,
        )
        previous, tracked.decision, tracked.state = tracked.decision, decision, decision.state
        if (
            previous is None
            or previous.desired != decision.desired
            or previous.mode != decision.mode
        ):
            log.info("%s: %s", key, decision.reason)
            self.on_decision(key, decision)
