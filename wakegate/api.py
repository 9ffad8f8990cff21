"""The loopback-only HTTP API of a running stack.

PUT    /v1/manifests?wait=1&dir=D   apply multi-document YAML, all or nothing: Knative
                                    Services (their relative paths resolve under D) and
                                    ConfigMaps of knative-serving, or KIngress/Endpoints/
                                    Secret objects. `wait` returns once every connected
                                    gateway serves the result, or an applied Service's
                                    newest revision fails (422).
GET    /v1/services[/{ns}/{name}]   Knative Services (one: with revisions and pods)
DELETE /v1/services/{ns}/{name}
GET    /v1/revisions | /v1/routes | /v1/pods
GET    /v1/pods/{name}/logs?tail=N&follow=1
GET    /v1/services/{ns}/{name}/logs?tail=N&follow=1
                                    every pod of the Service, each line led by `[pod/NAME] `
GET    /v1/ingresses                every ingress the gateways serve
DELETE /v1/ingresses/{ns}/{name}    an ingress applied as a KIngress
GET    /v1/objects/{kind}[/{ns}/{name}]?namespace=NS
                                    Knative-shaped objects (services, routes, revisions,
                                    pods, ingresses) as `kubectl get -o yaml` shows them;
                                    a list is a `List` with `items`
GET    /v1/proxy-config/{kind}?host=H&service=NS/NAME
                                    listeners, routes, clusters or endpoints served for a
                                    host (or a Service's hosts), each marked against the
                                    gateway's own config dump
GET    /v1/status                   snapshot version and per-gateway xDS status (ACKs, NACKs)
GET    /v1/config                   every key of Knative's ConfigMaps local mode acts on,
                                    with its effective value and where it comes from
GET    /                            the live view (static files under /ui/), which reads
GET    /v1/live | /v1/live/events   the whole state, and its updates as server-sent events
GET    /metrics | /healthz          /metrics includes the activator's (cold starts)

The live view's page and its data are only read with GET; it holds no state of its own
and uses relative URLs, so it is served wherever the API is.

Only requests addressed to a loopback name are answered (`Host: localhost`, 127.0.0.1,
[::1], with any port; anything else is 403 with nothing done), so a web page cannot
reach the API by rebinding its own name to 127.0.0.1. Every call but GET and HEAD also
needs the stack's token (`Authorization: Bearer <token>`, else 401): the API can start
any command, and a page can send a simple cross-origin POST to 127.0.0.1. No CORS
headers are sent, so a page cannot read a reply either.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import prometheus_client
import yaml
from aiohttp import web

from wakegate.ingress.configmap import ConfigError, ConfigMap
from wakegate.ingress.documents import load_all
from wakegate.ingress.manifests import ManifestError, load_manifests
from wakegate.ingress.objects import ingress_object
from wakegate.reconciler.local.config import configmap_objects, split_configmaps
from wakegate.reconciler.local.config import rows as config_rows
from wakegate.reconciler.local.live import LiveState
from wakegate.reconciler.local.manifests import ManifestReconciler
from wakegate.reconciler.local.services import FAILED, SERVED, LocalServing, Outcome
from wakegate.serving.conditions import condition_of
from wakegate.serving.fields import ServiceError
from wakegate.serving.objects import (
    RevisionState,
    object_list,
    pod_object,
    revision_object,
    route_object,
    service_object,
)
from wakegate.xds.controlplane import ControlPlane
from wakegate.xds.proxy_config import report as proxy_config_report

MAX_BODY = 16 * 1024 * 1024
SERVING_API = "serving.knative.dev/"
OBJECT_KINDS = ("services", "routes", "revisions", "pods", "ingresses", "config")
LOG_POLL_S = 0.25
UI_FILES = {
    "index.html": "text/html",
    "app.js": "text/javascript",
    "style.css": "text/css",
}
UI_HEADERS = {
    # The page reads from this origin only; nothing is fetched from anywhere else.
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _event(kind: str, data: Any) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def is_loopback_host(host: str) -> bool:
    """Whether a Host header names `localhost` or a loopback address (any port)."""
    name = host.strip().lower()
    if name.startswith("["):
        name = name[1 : name.find("]")] if "]" in name else ""
    elif name.count(":") == 1:
        name = name.partition(":")[0]
    if name.rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


SAFE_METHODS = frozenset({"GET", "HEAD"})


def guard(token: str) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Middleware: a loopback Host on every request, and `token` on every call that is
    not a GET or HEAD, compared in constant time."""
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        host = request.headers.get("Host", "")
        if not is_loopback_host(host):
            return _error(
                403, f"Host {host!r}: this API answers only localhost or a loopback address"
            )
        if request.method not in SAFE_METHODS:
            given = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                return _error(
                    401,
                    "this call needs the stack's token: Authorization: Bearer <token> "
                    "(the CLI reads it from the data dir's api.token)",
                )
        return await handler(request)

    return middleware


def _jsonable(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def _is_serving(text: str) -> bool:
    """Whether a manifest holds Knative Services (rather than ingress-level objects)."""
    try:
        documents = [d for d in load_all(text) if isinstance(d, dict)]
    except yaml.YAMLError:
        return False
    return any(
        str(d.get("apiVersion", "")).startswith(SERVING_API) or d.get("kind") == "Service"
        for d in documents
    )


@dataclass
class _Tail:
    """One pod's log file being followed: how far it was read, and a partial line."""

    path: Path
    offset: int = 0
    partial: bytes = b""
    lines: list[bytes] = field(default_factory=list)

    def read(self) -> None:
        """Read what was appended since; complete lines go to `lines`."""
        try:
            with self.path.open("rb") as f:
                size = f.seek(0, 2)
                if size < self.offset:  # truncated: start over
                    self.offset, self.partial = 0, b""
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return
        self.offset += len(data)
        *complete, self.partial = (self.partial + data).split(b"\n")
        self.lines.extend(line + b"\n" for line in complete)

    def flush(self) -> None:
        if self.partial:
            self.lines.append(self.partial + b"\n")
            self.partial = b""


class Api:
    def __init__(
        self,
        control_plane: ControlPlane,
        manifests: ManifestReconciler,
        serving: LocalServing | None = None,
        live: LiveState | None = None,
        *,
        token: str,
        processes: Callable[[], Awaitable[dict[str, Any]]] | None = None,
    ) -> None:
        self.cp = control_plane
        self.manifests = manifests
        self.serving = serving
        self.live = live or LiveState(control_plane, serving)
        self.processes = processes
        self.app = web.Application(client_max_size=MAX_BODY, middlewares=[guard(token)])
        self.app.add_routes(
            [
                web.get("/", self.get_ui),
                web.get("/ui/{file}", self.get_ui),
                web.get("/v1/live", self.get_live),
                web.get("/v1/live/events", self.get_live_events),
                web.get("/v1/objects/{kind}", self.get_objects),
                web.get("/v1/objects/{kind}/{namespace}/{name}", self.get_object),
                web.get("/v1/services/{namespace}/{name}/logs", self.get_service_logs),
                web.get("/v1/proxy-config/{kind}", self.get_proxy_config),
                web.put("/v1/manifests", self.put_manifests),
                web.get("/v1/services", self.get_services),
                web.get("/v1/services/{namespace}/{name}", self.get_service),
                web.delete("/v1/services/{namespace}/{name}", self.delete_service),
                web.get("/v1/revisions", self.get_revisions),
                web.get("/v1/routes", self.get_routes),
                web.get("/v1/pods", self.get_pods),
                web.get("/v1/pods/{name}/logs", self.get_pod_logs),
                web.get("/v1/ingresses", self.get_ingresses),
                web.delete("/v1/ingresses/{namespace}/{name}", self.delete_ingress),
                web.get("/v1/status", self.get_status),
                web.get("/v1/config", self.get_config),
                web.get("/metrics", self.get_metrics),
                web.get("/healthz", self.get_health),
            ]
        )
        self._runner: web.AppRunner | None = None

    async def start(self, host: str, port: int) -> int:
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"api address: got {host}, expected a loopback address")
        # On stop, requests still in flight (an apply waiting to be served) get a short
        # grace, not aiohttp's default minute: what they wait for is being stopped too.
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        server = site._server
        assert server is not None and server.sockets
        return int(server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def _serving(self) -> LocalServing:
        if self.serving is None:
            raise web.HTTPNotFound(text="this stack serves ingresses only\n")
        return self.serving

    # --- apply -----------------------------------------------------------------------

    async def put_manifests(self, request: web.Request) -> web.Response:
        text = await request.text()
        wait = request.query.get("wait") in {"1", "true"}
        timeout = float(request.query.get("timeout", "60"))
        started = time.monotonic()
        try:
            configmaps, rest = split_configmaps(text)
        except ConfigError as exc:
            return _error(400, str(exc))
        if configmaps:
            if self.serving is None:
                return _error(
                    400, "ConfigMaps configure Knative Serving; this stack serves ingresses only"
                )
            if rest is not None and not _is_serving(rest):
                return _error(
                    400,
                    "ConfigMaps are applied with Knative Services, not with KIngress objects: "
                    "apply them in files of their own",
                )
            return await self._apply_services(request, rest, wait, timeout, started, configmaps)
        if _is_serving(text) and self.serving is not None:
            return await self._apply_services(request, text, wait, timeout, started)
        try:
            manifests = load_manifests(text, source="body")
        except ManifestError as exc:
            return _error(400, str(exc))
        self.manifests.apply(manifests)
        version = await self.cp.flush()
        body: dict[str, Any] = {
            "version": version,
            "applied": [{"kind": "Ingress", "key": i.key} for i in manifests.ingresses],
        }
        if wait:
            served = await self.cp.server.wait_acked(self.cp.group, version, timeout)
            body["served"] = served
            body["seconds"] = round(time.monotonic() - started, 4)
            if not served:
                return web.json_response(body, status=504)
        return web.json_response(body)

    async def _apply_services(
        self,
        request: web.Request,
        text: str | None,
        wait: bool,
        timeout: float,
        started: float,
        configmaps: Sequence[ConfigMap] = (),
    ) -> web.Response:
        """Apply ConfigMaps and Services; with `wait`, each Service's own outcome: served,
        failed (at once, with why) or still waiting when `timeout` ran out (504)."""
        serving = self._serving()
        try:
            applied = serving.apply(text, request.query.get("dir", "."), configmaps)
        except (ServiceError, ConfigError) as exc:
            return _error(400, str(exc))
        names = {c.name for c in configmaps}
        body: dict[str, Any] = {
            "applied": [{"kind": "ConfigMap", "key": c.key} for c in configmaps],
            "notes": [n for n in serving.settings.notes if n.partition(":")[0] in names],
        }
        outcomes: list[Outcome] = []
        if wait:
            outcomes = list(
                await asyncio.gather(
                    *(
                        serving.wait_outcome(item.service.key, item.generation, timeout)
                        for item in applied
                    )
                )
            )
        for index, item in enumerate(applied):
            entry: dict[str, Any] = {
                "kind": "Service",
                "key": item.service.key,
                "revision": item.revision,
                "generation": item.generation,
                "url": serving.url(item.service.key),
            }
            if wait:
                entry["outcome"] = outcomes[index].state
                entry["reason"] = outcomes[index].reason
            body["applied"].append(entry)
        if not wait:
            return web.json_response(body)
        body["served"] = all(o.state == SERVED for o in outcomes)
        body["seconds"] = round(time.monotonic() - started, 4)
        if any(o.state == FAILED for o in outcomes):
            return web.json_response(body, status=422)
        if not body["served"]:
            return web.json_response(body, status=504)
        return web.json_response(body)

    # --- configuration -------------------------------------------------------------------

    async def get_config(self, request: web.Request) -> web.Response:
        return web.json_response(config_rows(self._serving().settings))

    # --- Knative Services ----------------------------------------------------------------

    async def get_services(self, request: web.Request) -> web.Response:
        out = []
        for service, status in self._serving().services():
            ready = condition_of(status, "Ready")
            out.append(
                {
                    "namespace": service.namespace,
                    "name": service.name,
                    "url": status.get("url", ""),
                    "latestCreatedRevisionName": status.get("latestCreatedRevisionName", ""),
                    "latestReadyRevisionName": status.get("latestReadyRevisionName", ""),
                    "ready": ready.get("status", "Unknown"),
                    "reason": ready.get("reason", ""),
                    "message": ready.get("message", ""),
                }
            )
        return web.json_response(out)

    async def get_service(self, request: web.Request) -> web.Response:
        serving = self._serving()
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        stored = serving.store.get_service(namespace, name)
        if stored is None:
            return _error(404, f"service {namespace}/{name}: not found")
        return web.json_response(
            {
                "manifest": stored.manifest,
                "status": serving.store.get_status(namespace, name) or {},
                "revisions": [
                    r.to_dict() for r in serving.revisions(namespace) if r.service == name
                ],
                "pods": [
                    p
                    for p in serving.pods()
                    if p["namespace"] == namespace and p["revision"].startswith(f"{name}-")
                ],
            }
        )

    async def delete_service(self, request: web.Request) -> web.Response:
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        if not await self._serving().delete(namespace, name):
            return _error(404, f"service {namespace}/{name}: not found")
        return web.json_response({"deleted": f"{namespace}/{name}"})

    async def get_revisions(self, request: web.Request) -> web.Response:
        self._serving()
        return web.json_response(self.live.revision_rows())

    async def get_routes(self, request: web.Request) -> web.Response:
        out = []
        for service, status in self._serving().services():
            routes_ready = condition_of(status, "RoutesReady")
            out.append(
                {
                    "namespace": service.namespace,
                    "name": service.name,
                    "url": status.get("url", ""),
                    "traffic": status.get("traffic", []),
                    "ready": routes_ready.get("status", "Unknown"),
                    "reason": routes_ready.get("reason", ""),
                }
            )
        return web.json_response(out)

    async def get_pods(self, request: web.Request) -> web.Response:
        return web.json_response(self._serving().pods())

    async def get_pod_logs(self, request: web.Request) -> web.StreamResponse:
        serving = self._serving()
        name = request.match_info["name"]
        if serving.pod_log(name) is None:
            return _error(404, f"pod {name}: not found")

        def pods() -> dict[str, Path]:
            path = serving.pod_log(name)
            return {} if path is None else {name: path}

        return await self._logs(request, pods, prefix=False)

    async def get_service_logs(self, request: web.Request) -> web.StreamResponse:
        serving = self._serving()
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        if serving.store.get_service(namespace, name) is None:
            return _error(404, f"service {namespace}/{name}: not found")

        def pods() -> dict[str, Path]:
            revisions = {r.name for r in serving.revisions(namespace) if r.service == name}
            return {
                p["name"]: Path(p["logPath"])
                for p in serving.pods()
                if p["namespace"] == namespace and p["revision"] in revisions
            }

        return await self._logs(request, pods, prefix=True)

    async def _logs(
        self, request: web.Request, pods: Callable[[], dict[str, Path]], *, prefix: bool
    ) -> web.StreamResponse:
        """The logs of `pods()`: the last `tail` lines of each (all when 0), then, with
        `follow`, every new line, of pods that come up later too, until the last pod is
        gone. With `prefix` each line is led by `[pod/NAME] `."""
        try:
            tail = int(request.query.get("tail", "0") or 0)
        except ValueError:
            return _error(400, f"tail: got {request.query['tail']!r}, expected a number")
        follow = request.query.get("follow") in {"1", "true"}
        response = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
        await response.prepare(request)
        tails: dict[str, _Tail] = {}
        first = True
        with contextlib.suppress(ConnectionError):
            while True:
                current = pods()
                for name, path in current.items():
                    if name not in tails:
                        tails[name] = _Tail(path)
                for name, state in tails.items():
                    state.read()
                    if name not in current or not follow:
                        state.flush()
                    lines = state.lines
                    if first and tail > 0:
                        lines = lines[-tail:]
                    state.lines = []
                    lead = f"[pod/{name}] ".encode() if prefix else b""
                    if lines:
                        await response.write(b"".join(lead + line for line in lines))
                first = False
                for name in [n for n in tails if n not in current]:
                    del tails[name]
                if not follow or not tails:
                    break
                await asyncio.sleep(LOG_POLL_S)
            await response.write_eof()
        return response

    # --- ingresses and the gateways --------------------------------------------------------

    async def get_ingresses(self, request: web.Request) -> web.Response:
        return web.json_response(
            [
                {"key": i.key, "hosts": sorted({h for r in i.rules for h in r.hosts})}
                for i in self.cp.ingresses()
            ]
        )

    async def delete_ingress(self, request: web.Request) -> web.Response:
        key = f"{request.match_info['namespace']}/{request.match_info['name']}"
        if not self.manifests.delete_ingress(key):
            return _error(404, f"ingress {key}: not found")
        return web.json_response({"deleted": key, "version": await self.cp.flush()})

    async def get_status(self, request: web.Request) -> web.Response:
        last = self.cp.last
        return web.json_response(
            {
                "version": last.version if last else None,
                "gatewayPort": self.cp.gateway.external_port,
                "gateways": _jsonable(self.cp.server.nodes()),
                "current": self.cp.server.current(),
                "errors": _jsonable(self.cp.translator.errors),
                "processes": await self.processes() if self.processes else {},
            }
        )

    async def get_metrics(self, request: web.Request) -> web.Response:
        # The activator is a process of its own with a registry of its own (no name
        # is in both): its families follow the control plane's.
        activator = (await self.live.activator_metrics()).encode()
        return web.Response(
            body=prometheus_client.generate_latest() + activator,
            headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST},
        )

    # --- Knative-shaped objects ------------------------------------------------------------

    def _objects(self, kind: str, namespace: str | None) -> list[dict[str, Any]]:
        if kind == "config":
            return [
                obj
                for obj in configmap_objects(self._serving().settings)
                if namespace is None or obj["metadata"]["namespace"] == namespace
            ]
        if kind == "ingresses":
            return [
                ingress_object(i)
                for i in self.cp.ingresses()
                if namespace is None or i.namespace == namespace
            ]
        serving = self._serving()
        services = [
            (service, status)
            for service, status in serving.services()
            if namespace is None or service.namespace == namespace
        ]
        revisions = [r for r in serving.revisions(namespace)]
        created = {}
        for revision in revisions:
            key = (revision.namespace, revision.service)
            if key not in created and revision.created_at is not None:
                created[key] = revision.created_at
        if kind in ("services", "routes"):
            build = service_object if kind == "services" else route_object
            out = []
            for service, status in services:
                stored = serving.store.get_service(service.namespace, service.name)
                generation = stored.generation if stored is not None else 0
                first = created.get((service.namespace, service.name))
                out.append(build(service, status, generation=generation, created=first))
            return out
        rows = {(r["namespace"], r["name"]): r for r in self.live.revision_rows()}
        if kind == "revisions":
            out = []
            for revision in revisions:
                row = rows.get((revision.namespace, revision.name), {})
                state = RevisionState(
                    ready=bool(row.get("ready")),
                    failed=str(row.get("failed") or ""),
                    desired=(row.get("autoscaler") or {}).get("desired"),
                    actual=int(row.get("readyPods") or 0),
                    routed=bool(row.get("routed")),
                )
                out.append(revision_object(revision, state))
            return out
        if kind == "pods":
            owners = {(r.namespace, r.name): r for r in revisions}
            out = []
            for pod in serving.pods():
                owner = owners.get((pod["namespace"], pod["revision"]))
                if owner is None:
                    continue
                container = owner.template.container.name or "user-container"
                out.append(pod_object(pod, owner.service, container))
            return out
        raise web.HTTPNotFound(text=f"kind {kind!r}: expected one of {', '.join(OBJECT_KINDS)}\n")

    async def get_objects(self, request: web.Request) -> web.Response:
        kind = request.match_info["kind"]
        if kind not in OBJECT_KINDS:
            return _error(404, f"kind {kind!r}: expected one of {', '.join(OBJECT_KINDS)}")
        namespace = request.query.get("namespace") or None
        return web.json_response(object_list(self._objects(kind, namespace)))

    async def get_object(self, request: web.Request) -> web.Response:
        kind = request.match_info["kind"]
        if kind not in OBJECT_KINDS:
            return _error(404, f"kind {kind!r}: expected one of {', '.join(OBJECT_KINDS)}")
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        for obj in self._objects(kind, namespace):
            if obj["metadata"]["name"] == name:
                return web.json_response(obj)
        return _error(404, f"{kind.rstrip('s')} {namespace}/{name}: not found")

    # --- what a gateway gets -----------------------------------------------------------

    async def get_proxy_config(self, request: web.Request) -> web.Response:
        service = request.query.get("service", "")
        if service and "/" not in service:
            service = f"default/{service}"
        dump = await self.live.gateway_config_dump()
        try:
            body = proxy_config_report(
                self.cp,
                request.match_info["kind"],
                host=request.query.get("host", ""),
                ingress=service,
                dump=dump,
            )
        except KeyError as exc:
            return _error(404, str(exc.args[0]))
        body["gateway"] = {"admin": self.live.gateway_admin, "dumped": dump is not None}
        return web.json_response(body)

    # --- the live view -------------------------------------------------------------------

    async def get_ui(self, request: web.Request) -> web.Response:
        name = request.match_info.get("file", "index.html")
        content_type = UI_FILES.get(name)
        if content_type is None:
            return _error(404, f"{request.path}: not found")
        body = (resources.files("wakegate") / "ui" / name).read_bytes()
        return web.Response(
            body=body, content_type=content_type, charset="utf-8", headers=UI_HEADERS
        )

    async def get_live(self, request: web.Request) -> web.Response:
        return web.json_response(self.live.document())

    async def get_live_events(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events: `snapshot` (the whole state) once, then an `update` a tick."""
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        with self.live.subscribe() as updates, contextlib.suppress(ConnectionError):
            await response.write(_event("snapshot", self.live.document()))
            while (update := await updates.get()) is not None:
                await response.write(_event("update", update))
        return response

    async def get_health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")
