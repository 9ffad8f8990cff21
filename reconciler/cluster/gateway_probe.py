"""Readiness probes of the gateway pods: does every gateway serve an ingress's version?

Each control-plane replica sees only the gateways connected to itself, so its ACKs
cannot tell the leader that every gateway serves an ingress. As net-kourier and
net-contour do, the leader asks the gateways: every ready pod behind the gateway's
cluster-local Service (read from its EndpointSlices) gets `GET /ready/<hash>` with
`Host: <hash>.<status domain>` on its cluster-local listener, and answers 200 once it serves
that version of the ingress (see `wakegate.xds.readiness`).

Level-triggered: the prober is told what is wanted (ingress key → hash) and which pods
are ready; it probes each (ingress, pod) pair that has not answered 200 yet, retrying
with exponential back-off until the pod answers, the pair is no longer wanted or the
pod is gone, with at most `concurrency` requests in flight. `on_change` is called when
a pod answers 200 or the set of pods changes.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import aiohttp
import tenacity
from prometheus_client import Counter

from wakegate.ingress.model import Endpoint
from wakegate.reconciler.cluster.kubernetes import Backoff
from wakegate.xds.readiness import STATUS_DOMAIN, ready_host, ready_path

log = logging.getLogger(__name__)

PROBES = Counter(
    "wakegate_gateway_probes_total",
    "Readiness probes of gateway pods, by outcome",
    ["result"],
)

DEFAULT_PROBE_PORT = 8081
"""The gateway pods' cluster-local listener (`GatewayConfig.internal_port` in a pod)."""
DEFAULT_BACKOFF = Backoff(initial_s=0.05, max_s=5.0)
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_SHOWN = 3
"""How many waiting pods a message names."""


@dataclass(frozen=True, slots=True)
class GatewayService:
    """The gateway's cluster-local Service, and the port its pods are probed on: a
    number (the pod port itself) or a name (the EndpointSlice port of that name, which
    Kubernetes resolves per pod from the Service port's targetPort)."""

    namespace: str
    name: str
    port: int | str = DEFAULT_PROBE_PORT

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def parse_gateway_service(text: str) -> tuple[str, str]:
    """`NAMESPACE/NAME` → (namespace, name); ValueError saying what is expected."""
    namespace, sep, name = text.strip().partition("/")
    if not sep or not _DNS_LABEL.match(namespace) or not _DNS_LABEL.match(name):
        raise ValueError(f"expected NAMESPACE/NAME of a Service, got {text!r}")
    return namespace, name


def parse_probe_port(text: str) -> int | str:
    """A port number (1-65535) or a port name (a DNS label); ValueError otherwise."""
    value = text.strip()
    if value.isdigit():
        port = int(value)
        if 1 <= port <= 65535:
            return port
    elif _DNS_LABEL.match(value):
        return value
    raise ValueError(f"expected a port number (1-65535) or a port name, got {text!r}")


def pod_name(pod: Endpoint) -> str:
    host = f"[{pod.address}]" if ":" in pod.address else pod.address
    return f"{host}:{pod.port}"


class NotServed(Exception):
    """A pod answered, but not 200: it does not serve that version yet."""


@dataclass
class _Wanted:
    digest: str
    served: set[Endpoint] = field(default_factory=set)
    """Pods that answered 200 for `digest`."""
    errors: dict[Endpoint, str] = field(default_factory=dict)
    """The last failed answer of each pod still probed."""


class GatewayProber:
    """Probes every ready gateway pod for each wanted ingress hash until it is served."""

    def __init__(
        self,
        *,
        on_change: Callable[[], None] = lambda: None,
        domain: str = STATUS_DOMAIN,
        concurrency: int = 16,
        timeout_s: float = 2.0,
        backoff: Backoff = DEFAULT_BACKOFF,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.on_change = on_change
        self.domain = domain
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.backoff = backoff
        self._pods: frozenset[Endpoint] | None = None
        self._wanted: dict[str, _Wanted] = {}
        self._tasks: dict[tuple[str, Endpoint], tuple[str, asyncio.Task[None]]] = {}
        self._limit = asyncio.Semaphore(concurrency)
        self._session: aiohttp.ClientSession | None = None
        self.running = asyncio.Event()
        """Set while `run` is probing."""

    # --- desired state ------------------------------------------------------------------

    @property
    def pods(self) -> frozenset[Endpoint] | None:
        """The ready gateway pods; None until they were first set."""
        return self._pods

    def set_pods(self, pods: Iterable[Endpoint]) -> None:
        new = frozenset(pods)
        if new == self._pods:
            return
        self._pods = new
        for wanted in self._wanted.values():
            wanted.served &= new
            for pod in wanted.errors.keys() - new:
                del wanted.errors[pod]
        log.info("gateway pods to probe: %s", ", ".join(map(pod_name, sorted(new, key=_order))))
        self._reconcile()
        self.on_change()

    def set_wanted(self, wanted: Mapping[str, str]) -> None:
        """Probe for exactly these ingress keys → hashes (earlier answers for an
        unchanged hash are kept)."""
        for key in self._wanted.keys() - wanted.keys():
            del self._wanted[key]
        for key, digest in wanted.items():
            current = self._wanted.get(key)
            if current is None or current.digest != digest:
                self._wanted[key] = _Wanted(digest)
        self._reconcile()

    def wanted(self) -> dict[str, str]:
        return {key: wanted.digest for key, wanted in self._wanted.items()}

    def probing(self) -> set[tuple[str, Endpoint]]:
        """The (ingress key, pod) pairs being probed now."""
        return set(self._tasks)

    # --- results ------------------------------------------------------------------------

    def served(self, key: str, digest: str) -> bool:
        """Every ready pod (at least one) answered 200 for `digest` of `key`."""
        wanted = self._wanted.get(key)
        pods = self._pods
        if not pods or wanted is None or wanted.digest != digest:
            return False
        return wanted.served >= pods

    def pending(self, key: str, digest: str) -> list[Endpoint]:
        """The ready pods that have not answered 200 for `digest` of `key` yet."""
        wanted = self._wanted.get(key)
        served = wanted.served if wanted is not None and wanted.digest == digest else set()
        return sorted((self._pods or frozenset()) - served, key=_order)

    def waiting(self, key: str, digest: str) -> str:
        """Why `digest` of `key` is not served yet, in one line."""
        pods = self._pods
        if pods is None:
            return "the gateway pods are not known yet"
        if not pods:
            return "no gateway pod is ready"
        pending = self.pending(key, digest)
        if not pending:
            return ""
        wanted = self._wanted.get(key)
        errors = wanted.errors if wanted is not None and wanted.digest == digest else {}
        shown = ", ".join(
            pod_name(pod) + (f" ({errors[pod]})" if pod in errors else "")
            for pod in pending[:_SHOWN]
        )
        more = f" and {len(pending) - _SHOWN} more" if len(pending) > _SHOWN else ""
        return f"{len(pending)} of {len(pods)} gateway pods do not serve it yet: {shown}{more}"

    # --- running ------------------------------------------------------------------------

    async def run(self) -> None:
        """Probe until cancelled."""
        connector = aiohttp.TCPConnector(limit=self.concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:
            self._session = session
            try:
                self._reconcile()
                self.running.set()
                await asyncio.Event().wait()
            finally:
                self.running.clear()
                self._session = None
                tasks = [task for _, task in self._tasks.values()]
                self._tasks.clear()
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    def _reconcile(self) -> None:
        pods = self._pods or frozenset()
        for pair, (digest, task) in list(self._tasks.items()):
            key, pod = pair
            wanted = self._wanted.get(key)
            if wanted is None or wanted.digest != digest or pod not in pods or pod in wanted.served:
                task.cancel()
                del self._tasks[pair]
        if self._session is None:
            return
        for key, wanted in self._wanted.items():
            for pod in pods - wanted.served:
                if (key, pod) not in self._tasks:
                    task = asyncio.create_task(
                        self._probe(key, pod, wanted.digest), name=f"probe {key} {pod_name(pod)}"
                    )
                    self._tasks[key, pod] = (wanted.digest, task)

    async def _probe(self, key: str, pod: Endpoint, digest: str) -> None:
        url = f"http://{pod_name(pod)}{ready_path(digest)}"

        def failed(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            wanted = self._wanted.get(key)
            if wanted is not None and wanted.digest == digest:
                wanted.errors[pod] = str(exc) if isinstance(exc, NotServed) else _describe(exc)
            log.debug("probe %s of %s: %s", url, key, exc)

        initial, most = self.backoff.initial_s, self.backoff.max_s
        retrying = tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception_type(Exception),
            wait=tenacity.wait_exponential(multiplier=initial, max=most)
            + tenacity.wait_random(0, initial),
            stop=tenacity.stop_never,
            before_sleep=failed,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    await self._get(url, ready_host(digest, self.domain))
        finally:
            entry = self._tasks.get((key, pod))
            if entry is not None and entry[1] is asyncio.current_task():
                del self._tasks[key, pod]
        wanted = self._wanted.get(key)
        if wanted is not None and wanted.digest == digest and pod in (self._pods or ()):
            wanted.served.add(pod)
            wanted.errors.pop(pod, None)
            self.on_change()

    async def _get(self, url: str, host: str) -> None:
        session = self._session
        if session is None:
            raise RuntimeError("the prober is not running")
        async with self._limit:
            try:
                async with session.get(
                    url,
                    headers={"Host": host},
                    allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                ) as response:
                    status = response.status
            except (aiohttp.ClientError, TimeoutError, OSError):
                PROBES.labels(result="error").inc()
                raise
        if status != 200:
            PROBES.labels(result="not_served").inc()
            raise NotServed(f"HTTP {status}")
        PROBES.labels(result="served").inc()


def _order(pod: Endpoint) -> tuple[str, int]:
    return pod.address, pod.port


def _describe(exc: BaseException | None) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect: {exc.os_error.strerror or exc.os_error}"
    return type(exc).__name__ if exc is not None else "failed"
