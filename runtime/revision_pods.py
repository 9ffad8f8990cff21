"""A revision's pods: kept at a desired number, their ready endpoints reported.

Stopping is make-before-break: a pod leaves the endpoint set first, the `before_stop`
hook lets the caller wait until the gateways stopped sending it traffic, then the pod is
stopped (SIGTERM, a grace period to finish in-flight requests, SIGKILL).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

from wakegate.runtime.pods import DEFAULT_GRACE_PERIOD_S, Backoff, Pod, PodEndpoint, PodStatus
from wakegate.runtime.ports import LOOPBACK, PortAllocator
from wakegate.runtime.probes import ProbeTiming
from wakegate.runtime.spec import PodError, PodSpec, pod_name
from wakegate.serving.revision import Revision

log = logging.getLogger("wakegate.runtime")


class RevisionPods:
    """The pods of one revision, kept at the count `scale()` asks for.

    `on_change(endpoints)` is called with the ready endpoints, in pod creation order,
    each time that list changes. `before_stop(pods)` is awaited after pods left the
    endpoint list and before they get SIGTERM: the place to wait until every gateway
    has acknowledged the endpoints without them.
    """

    def __init__(
        self,
        spec: PodSpec,
        *,
        log_dir: str | os.PathLike[str],
        host: str = LOOPBACK,
        grace_period_s: float = DEFAULT_GRACE_PERIOD_S,
        backoff: Backoff | None = None,
        probe_timing: ProbeTiming | None = None,
        ports: PortAllocator | None = None,
        on_change: Callable[[list[PodEndpoint]], None] | None = None,
        before_stop: Callable[[list[Pod]], Awaitable[None]] | None = None,
    ) -> None:
        self.spec = spec
        self.log_dir = Path(log_dir)
        self.host = host
        self.grace_period_s = grace_period_s
        self.backoff = backoff
        self.probe_timing = probe_timing
        self.ports = ports
        self.on_change = on_change
        self.before_stop = before_stop
        self._pods: dict[str, Pod] = {}
        """Pods that count towards the scale, oldest first."""
        self._terminating: dict[str, Pod] = {}
        self._endpoints: tuple[PodEndpoint, ...] = ()
        self._lock = asyncio.Lock()
        self._changed = asyncio.Event()
        self._stops: set[asyncio.Task[None]] = set()
        self._closed = False

    @classmethod
    def for_revision(
        cls,
        revision: Revision,
        *,
        base_dir: str | os.PathLike[str],
        log_dir: str | os.PathLike[str],
        **options: Any,
    ) -> RevisionPods:
        return cls(PodSpec.from_revision(revision, base_dir), log_dir=log_dir, **options)

    @property
    def revision(self) -> str:
        return self.spec.revision

    @property
    def pods(self) -> list[Pod]:
        """Pods that count towards the scale (not those terminating)."""
        return list(self._pods.values())

    def ready_pods(self) -> list[PodEndpoint]:
        return list(self._endpoints)

    def status(self) -> list[PodStatus]:
        """Every pod, terminating ones included."""
        return [pod.status() for pod in (*self._pods.values(), *self._terminating.values())]

    async def scale(self, replicas: int) -> None:
        """Start or stop pods until `replicas` count towards the scale.

        Returns once new processes are spawned (not ready: see `wait_ready` and
        `on_change`) and removed pods have exited. Not-ready pods are stopped first,
        then the newest. PodError (and nothing started) if the command cannot run.
        """
        if replicas < 0:
            raise ValueError(f"replicas must be >= 0, got {replicas}")
        if self._closed:
            raise PodError(f"the pods of revision {self.revision} are closed")
        async with self._lock:
            live = list(self._pods.values())
            if replicas > len(live):
                await self._start(replicas - len(live))
                return
            ranked = sorted(enumerate(live), key=lambda item: (item[1].ready, -item[0]))
            victims = [pod for _, pod in ranked[: len(live) - replicas]]
            self._detach(victims)
        await self._stop(victims, self.grace_period_s)

    async def wait_ready(self, count: int = 1, timeout_s: float | None = None) -> list[PodEndpoint]:
        """Until at least `count` pods are ready; their endpoints."""
        async with asyncio.timeout(timeout_s):
            while len(self._endpoints) < count:
                changed = self._changed
                await changed.wait()
        return list(self._endpoints)

    async def stop_pod(self, pod: Pod | str, grace_s: float | None = None) -> None:
        """Stop one pod (make-before-break, as a scale-down does); the count drops by one."""
        name = pod if isinstance(pod, str) else pod.name
        async with self._lock:
            found = self._pods.get(name)
            if found is not None:
                self._detach([found])
        if found is None:
            if name in self._terminating:
                await self._terminating[name].stop()
                return
            raise KeyError(f"no pod {name} in revision {self.revision}")
        await self._stop([found], self.grace_period_s if grace_s is None else grace_s)

    async def close(self, grace_s: float | None = None) -> None:
        """Stop every pod (after `before_stop`) and wait for all of them to exit."""
        self._closed = True
        async with self._lock:
            victims = list(self._pods.values())
            self._detach(victims)
        await self._stop(victims, self.grace_period_s if grace_s is None else grace_s)
        while self._stops:
            await asyncio.gather(*self._stops, return_exceptions=True)

    def _new_pod(self) -> Pod:
        name = pod_name(self.revision, (*self._pods, *self._terminating))
        return Pod(
            self.spec,
            log_dir=self.log_dir,
            name=name,
            host=self.host,
            ports=self.ports,
            probe_timing=self.probe_timing,
            backoff=self.backoff,
            on_change=self._pod_changed,
        )

    async def _start(self, count: int) -> None:
        new = [self._new_pod() for _ in range(count)]
        for pod in new:
            self._pods[pod.name] = pod
        results = await asyncio.gather(*(pod.start() for pod in new), return_exceptions=True)
        failed = [(pod, r) for pod, r in zip(new, results, strict=True) if r is not None]
        if not failed:
            return
        for pod, _ in failed:
            self._pods.pop(pod.name, None)
        started = [pod for pod in new if pod.name in self._pods]
        self._detach(started)
        await self._stop(started, 0.0)
        raise failed[0][1]

    def _detach(self, pods: Iterable[Pod]) -> None:
        """Take pods out of the scale and the endpoints, before they are stopped."""
        for pod in pods:
            if self._pods.pop(pod.name, None) is not None:
                self._terminating[pod.name] = pod
        self._refresh()

    async def _stop(self, pods: list[Pod], grace_s: float) -> None:
        if not pods:
            return
        task = asyncio.create_task(self._stop_now(pods, grace_s))
        self._stops.add(task)
        task.add_done_callback(self._stops.discard)
        await asyncio.shield(task)

    async def _stop_now(self, pods: list[Pod], grace_s: float) -> None:
        if self.before_stop is not None:
            try:
                await self.before_stop(list(pods))
            except Exception:
                log.exception("before_stop hook failed for %s; stopping anyway", pods)
        await asyncio.gather(*(pod.stop(grace_s) for pod in pods))
        for pod in pods:
            self._terminating.pop(pod.name, None)
        self._refresh()

    def _pod_changed(self, pod: Pod) -> None:
        self._refresh()

    def _refresh(self) -> None:
        endpoints = tuple(ep for pod in self._pods.values() if (ep := pod.endpoint) is not None)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        if endpoints != self._endpoints:
            self._endpoints = endpoints
            if self.on_change is not None:
                try:
                    self.on_change(list(endpoints))
                except Exception:
                    log.exception("on_change callback failed for revision %s", self.revision)
