"""Kubernetes API access and list+watch sources (informers) for cluster mode.

Configuration, credentials (kubeconfig, in-cluster service account, token refresh) and
the HTTP transport come from `kubernetes.aio`, the asyncio flavour that the official
`kubernetes` package ships: no threads, and every call is cancellable. Requests go
through its `ApiClient` as plain JSON rather than its generated model classes, because
the Knative resources have no models, `parse_ingress` takes dicts, and a watch must
see each line itself: `kubernetes.aio.watch.Watch` answers a `410 Gone` by resuming
from the same expired version, where an informer has to re-list.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import tenacity
from kubernetes.aio import client as kube_client
from kubernetes.aio import config as kube_config
from prometheus_client import Counter

log = logging.getLogger(__name__)


def _version() -> str:
    try:
        return importlib.metadata.version("wakegate")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


USER_AGENT = f"wakegate/{_version()}"
FIELD_MANAGER = "wakegate"

Obj = dict[str, Any]
T = TypeVar("T")
Handler = Callable[[str, Obj], None]
"""Called with ("ADDED" | "MODIFIED" | "DELETED", object)."""

API_ERRORS = Counter(
    "wakegate_kube_api_errors_total",
    "Failed Kubernetes API requests and broken watches",
    ["resource"],
)
RELISTS = Counter(
    "wakegate_kube_relists_total",
    "Full lists of a resource (the first one and each after 410 Gone)",
    ["resource"],
)
EVENTS = Counter(
    "wakegate_kube_watch_events_total",
    "Watch events received",
    ["resource", "type"],
)


@dataclass(frozen=True, slots=True)
class Resource:
    """A REST collection: group (empty for core), version, plural."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None = None, name: str | None = None, sub: str = "") -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if namespace is not None and self.namespaced:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        if name is not None:
            base += f"/{name}"
            if sub:
                base += f"/{sub}"
        return base


KINGRESSES = Resource("networking.internal.knative.dev", "v1alpha1", "ingresses", "Ingress")
SERVERLESS_SERVICES = Resource(
    "networking.internal.knative.dev", "v1alpha1", "serverlessservices", "ServerlessService"
)
SERVICES = Resource("", "v1", "services", "Service")
ENDPOINT_SLICES = Resource("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice")
SECRETS = Resource("", "v1", "secrets", "Secret")
LEASES = Resource("coordination.k8s.io", "v1", "leases", "Lease")


class ApiError(Exception):
    """A failed API request: HTTP status (0 when no response came) and the server's reason."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}" if status else message)
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def retryable(self) -> bool:
        return self.status == 0 or self.status == 429 or self.status >= 500


class Gone(ApiError):
    """410: the resourceVersion asked for is no longer available; re-list."""


def _api_error(status: int, text: str) -> ApiError:
    reason, message = "", text.strip()[:300]
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if isinstance(body, dict):
        reason = str(body.get("reason") or "")
        message = str(body.get("message") or message)
    cls = Gone if status == 410 else ApiError
    return cls(status, reason, message)


def key_of(obj: Mapping[str, Any]) -> str:
    """The object's key: namespace/name, or the name of a cluster-scoped object."""
    meta = obj.get("metadata") or {}
    namespace = meta.get("namespace")
    return f"{namespace}/{meta.get('name')}" if namespace else str(meta.get("name"))


def retryable(exc: BaseException) -> bool:
    if isinstance(exc, ApiError):
        return exc.retryable
    return isinstance(exc, aiohttp.ClientError | TimeoutError | ConnectionError)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential back-off with jitter between retries of failed API calls."""

    initial_s: float = 0.5
    max_s: float = 30.0
    attempts: int | None = None
    """Give up (re-raise) after this many attempts; None retries for ever."""

    def retrying(self, what: str, *, retry_all: bool = False) -> tenacity.AsyncRetrying:
        """A tenacity loop for `what`. `retry_all` retries any error, not only transient
        ones: a source keeps trying until RBAC, a CRD or a malformed reply is fixed."""

        def should_retry(exc: BaseException) -> bool:
            return (retry_all and isinstance(exc, Exception)) or retryable(exc)

        def before_sleep(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            delay = state.next_action.sleep if state.next_action else 0.0
            log.warning("%s failed (%s); retrying in %.1fs", what, exc, delay)

        return tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception(should_retry),
            wait=tenacity.wait_exponential(multiplier=self.initial_s, max=self.max_s)
            + tenacity.wait_random(0, self.initial_s),
            stop=tenacity.stop_after_attempt(self.attempts)
            if self.attempts
            else tenacity.stop_never,
            before_sleep=before_sleep,
            reraise=True,
        )

    async def call(
        self, what: str, fn: Callable[[], Awaitable[T]], *, retry_all: bool = False
    ) -> T:
        async for attempt in self.retrying(what, retry_all=retry_all):
            with attempt:
                return await fn()
        raise AssertionError("unreachable")


def _default_kubeconfig() -> str:
    """The first existing file of $KUBECONFIG (a path list), else ~/.kube/config."""
    paths = (os.environ.get("KUBECONFIG") or "~/.kube/config").split(os.pathsep)
    for path in (os.path.expanduser(p) for p in paths if p):
        if os.path.isfile(path):
            return path
    raise kube_config.ConfigException(
        f"no kubeconfig at {os.pathsep.join(paths)}, and not running in a pod: pass --kubeconfig"
    )


async def load_configuration(kubeconfig: str | Path | None = None) -> kube_client.Configuration:
    """`kubeconfig` if given; else the in-cluster service account when running in a
    pod; else ~/.kube/config (honouring $KUBECONFIG)."""
    configuration = kube_client.Configuration()
    if kubeconfig:
        await kube_config.load_kube_config(
            config_file=str(kubeconfig), client_configuration=configuration
        )
    elif os.environ.get("KUBERNETES_SERVICE_HOST"):
        kube_config.load_incluster_config(client_configuration=configuration)
    else:
        default = _default_kubeconfig()
        await kube_config.load_kube_config(config_file=default, client_configuration=configuration)
    return configuration


class KubeApi:
    """JSON requests to the API server through the official client's `ApiClient`."""

    def __init__(self, api_client: kube_client.ApiClient, *, timeout_s: float = 30.0) -> None:
        self.api_client = api_client
        self.api_client.user_agent = USER_AGENT
        self.timeout_s = timeout_s

    @classmethod
    def from_configuration(cls, configuration: kube_client.Configuration) -> KubeApi:
        return cls(kube_client.ApiClient(configuration))

    @classmethod
    def for_host(cls, host: str) -> KubeApi:
        """An unauthenticated client for `host` (e.g. http://127.0.0.1:PORT)."""
        return cls.from_configuration(kube_client.Configuration(host=host))

    async def close(self) -> None:
        await self.api_client.close()

    async def _send(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, Any] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: aiohttp.ClientTimeout | None = None,
    ) -> aiohttp.ClientResponse:
        query = dict(query or {})
        if method in ("POST", "PUT", "PATCH"):
            query.setdefault("fieldManager", FIELD_MANAGER)
        params = [(k, v) for k, v in query.items() if v is not None]
        headers = {"Accept": "application/json", "Content-Type": content_type}
        serialized = await self.api_client.param_serialize(
            method=method,
            resource_path=path,
            query_params=params,
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        try:
            response = await self.api_client.call_api(
                *serialized,
                _preload_content=False,
                _request_timeout=timeout or aiohttp.ClientTimeout(total=self.timeout_s),
            )
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise ApiError(0, type(exc).__name__, f"{method} {path}: {exc!r}") from exc
        raw: aiohttp.ClientResponse = response.response
        if raw.status >= 400:
            try:
                text = await raw.text()
            finally:
                raw.release()
            raise _api_error(raw.status, text)
        return raw

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, Any] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> Obj:
        response = await self._send(method, path, query=query, body=body, content_type=content_type)
        try:
            data = await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ApiError(0, type(exc).__name__, f"{method} {path}: {exc!r}") from exc
        finally:
            response.release()
        return json.loads(data) if data else {}

    # --- typed helpers ------------------------------------------------------------------

    async def get(self, resource: Resource, namespace: str | None, name: str) -> Obj:
        return await self.request("GET", resource.path(namespace, name))

    async def create(self, resource: Resource, namespace: str | None, obj: Obj) -> Obj:
        return await self.request("POST", resource.path(namespace), body=obj)

    async def replace(self, resource: Resource, namespace: str | None, name: str, obj: Obj) -> Obj:
        return await self.request("PUT", resource.path(namespace, name), body=obj)

    async def patch_status(
        self, resource: Resource, namespace: str | None, name: str, status: Obj
    ) -> Obj:
        """JSON merge patch of the `status` subresource."""
        return await self.request(
            "PATCH",
            resource.path(namespace, name, "status"),
            body={"status": status},
            content_type="application/merge-patch+json",
        )

    async def list(
        self,
        resource: Resource,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        page_size: int = 500,
    ) -> tuple[list[Obj], str]:
        """Every object (all pages) and the list's resourceVersion."""
        items: list[Obj] = []
        token: str | None = None
        while True:
            page = await self.request(
                "GET",
                resource.path(namespace),
                query={
                    "labelSelector": label_selector,
                    "fieldSelector": field_selector,
                    "limit": page_size,
                    "continue": token,
                },
            )
            for item in page.get("items") or []:
                item.setdefault("apiVersion", resource.api_version)
                item.setdefault("kind", resource.kind)
                items.append(item)
            meta = page.get("metadata") or {}
            token = meta.get("continue")
            if not token:
                return items, str(meta.get("resourceVersion") or "")

    async def watch(
        self,
        resource: Resource,
        resource_version: str,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        timeout_s: int = 300,
        opened: Callable[[], None] | None = None,
    ) -> AsyncIterator[Obj]:
        """Watch events after `resource_version`, BOOKMARKs included, until the server
        ends the stream. Raises `Gone` on 410 (HTTP or ERROR event), `ApiError` else.
        `opened()` is called once the server accepted the watch."""
        response = await self._send(
            "GET",
            resource.path(namespace),
            query={
                "watch": "true",
                "resourceVersion": resource_version,
                "allowWatchBookmarks": "true",
                "timeoutSeconds": timeout_s,
                "labelSelector": label_selector,
                "fieldSelector": field_selector,
            },
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=timeout_s + 30),
        )
        if opened is not None:
            opened()
        try:
            async for line in response.content:
                if not line.strip():
                    continue
                event = json.loads(line)
                if event.get("type") == "ERROR":
                    status = event.get("object") or {}
                    code = int(status.get("code") or 500)
                    cls = Gone if code == 410 else ApiError
                    raise cls(code, str(status.get("reason", "")), str(status.get("message", "")))
                yield event
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ApiError(0, type(exc).__name__, f"watch {resource.plural}: {exc!r}") from exc
        finally:
            response.release()


class Informer:
    """list+watch of one resource into a local store, reporting each change once.

    Watches resume from the last resourceVersion seen (objects and BOOKMARKs); a
    `410 Gone` re-lists, and the difference between the store and the new list is
    reported as ADDED/MODIFIED/DELETED, so handlers only ever see a consistent stream.
    API errors are retried with exponential back-off.

    The store is *current* (`synced` set) from a complete list for as long as a watch
    continues it: a watch that ends or breaks makes it stale until the next watch
    from where it stopped is accepted, or until a re-list after `410 Gone` completes.
    `on_sync(current)` is called at each change, so that nothing is derived from a
    store that may be missing changes (after an API server restart, say, each resource
    re-lists on its own schedule).
    """

    def __init__(
        self,
        api: KubeApi,
        resource: Resource,
        handler: Handler,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        transform: Callable[[Obj], Obj] | None = None,
        backoff: Backoff | None = None,
        watch_timeout_s: int = 300,
        on_sync: Callable[[bool], None] | None = None,
    ) -> None:
        self.api = api
        self.resource = resource
        self.handler = handler
        self.namespace = namespace
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.transform = transform or (lambda obj: obj)
        self.backoff = backoff or Backoff()
        self.watch_timeout_s = watch_timeout_s
        self.on_sync = on_sync
        self.store: dict[str, Obj] = {}
        self.resource_version = ""
        self.synced = asyncio.Event()
        """Set while the store is current (see the class docstring)."""
        self.relists = 0

    @property
    def name(self) -> str:
        return self.resource.plural

    async def run(self) -> None:
        """List, then watch for ever (until cancelled)."""
        try:
            while True:
                if not self.resource_version:
                    await self.backoff.call(f"list {self.name}", self._relist, retry_all=True)
                await self.backoff.call(f"watch {self.name}", self._watch, retry_all=True)
        finally:
            self._set_synced(False)

    def _set_synced(self, current: bool) -> None:
        if current == self.synced.is_set():
            return
        if current:
            self.synced.set()
        else:
            self.synced.clear()
        if self.on_sync is not None:
            try:
                self.on_sync(current)
            except Exception:
                log.exception("sync callback for %s failed", self.name)

    async def _relist(self) -> None:
        try:
            items, version = await self.api.list(
                self.resource,
                namespace=self.namespace,
                label_selector=self.label_selector,
                field_selector=self.field_selector,
            )
        except ApiError:
            API_ERRORS.labels(resource=self.name).inc()
            raise
        self.relists += 1
        RELISTS.labels(resource=self.name).inc()
        fresh = {key_of(item): self.transform(item) for item in items}
        old, self.store = self.store, fresh
        for key, obj in old.items():
            if key not in fresh:
                self._emit("DELETED", obj)
        for key, obj in fresh.items():
            before = old.get(key)
            if before is None:
                self._emit("ADDED", obj)
            elif _version(before) != _version(obj) or not _version(obj):
                self._emit("MODIFIED", obj)
        self.resource_version = version
        self._set_synced(True)

    async def _watch(self) -> None:
        received = False
        try:
            async for event in self.api.watch(
                self.resource,
                self.resource_version,
                namespace=self.namespace,
                label_selector=self.label_selector,
                field_selector=self.field_selector,
                timeout_s=self.watch_timeout_s,
                opened=lambda: self._set_synced(True),
            ):
                received = True
                self._apply(event)
            self._set_synced(False)
        except Gone:
            log.info("watch of %s expired (410 Gone); re-listing", self.name)
            self._set_synced(False)
            self.resource_version = ""
        except ApiError:
            self._set_synced(False)
            API_ERRORS.labels(resource=self.name).inc()
            if not received:
                raise
            log.info("watch of %s broke; resuming from %s", self.name, self.resource_version)

    def _apply(self, event: Obj) -> None:
        kind = str(event.get("type"))
        obj = event.get("object") or {}
        EVENTS.labels(resource=self.name, type=kind).inc()
        version = _version(obj)
        if kind == "BOOKMARK":
            if version:
                self.resource_version = version
            return
        if kind not in ("ADDED", "MODIFIED", "DELETED"):
            log.warning("ignoring watch event of type %r for %s", kind, self.name)
            return
        obj.setdefault("apiVersion", self.resource.api_version)
        obj.setdefault("kind", self.resource.kind)
        key = key_of(obj)
        if kind == "DELETED":
            gone = self.store.pop(key, None)
            if gone is not None:
                self._emit("DELETED", self.transform(obj))
        else:
            item = self.transform(obj)
            kind = "MODIFIED" if key in self.store else "ADDED"
            self.store[key] = item
            self._emit(kind, item)
        if version:
            self.resource_version = version

    def _emit(self, kind: str, obj: Obj) -> None:
        try:
            self.handler(kind, obj)
        except Exception:
            log.exception("handler for %s %s %s failed", self.name, kind, key_of(obj))


def _version(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")
