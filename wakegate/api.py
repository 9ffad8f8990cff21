"""The loopback-only HTTP API of a running stack.

PUT    /v1/manifests?wait=1&dir=D   apply multi-document YAML, all or nothing: Knative
                                    Services (their relative paths resolve under D), or
                                    KIngress/Endpoints/Secret objects. `wait` returns
                                    once every connected gateway serves the result.
GET    /v1/services[/{ns}/{name}]   Knative Services (one: with revisions and pods)
DELETE /v1/services/{ns}/{name}
GET    /v1/revisions | /v1/routes | /v1/pods
GET    /v1/pods/{name}/logs?tail=N
GET    /v1/ingresses                every ingress the gateways serve
DELETE /v1/ingresses/{ns}/{name}    an ingress applied as a KIngress
GET    /v1/status                   snapshot version and per-gateway xDS status (ACKs, NACKs)
GET    /metrics | /healthz

Only requests addressed to a loopback name are answered (`Host: localhost`, 127.0.0.1,
[::1], with any port; anything else is 403 with nothing done), so a web page cannot
reach the API by rebinding its own name to 127.0.0.1. Every call but GET and HEAD also
needs the stack's token (`Authorization: Bearer <token>`, else 401): the API can start
any command, and a page can send a simple cross-origin POST to 127.0.0.1. No CORS
headers are sent, so a page cannot read a reply either.
"""

from __future__ import annotations

import hmac
import ipaddress
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import fields, is_dataclass
from typing import Any

import prometheus_client
import yaml
from aiohttp import web

from wakegate.ingress.manifests import ManifestError, load_manifests
from wakegate.reconciler.local.manifests import ManifestReconciler
from wakegate.reconciler.local.services import LocalServing
from wakegate.serving.fields import ServiceError
from wakegate.xds.controlplane import ControlPlane

MAX_BODY = 16 * 1024 * 1024
SERVING_API = "serving.knative.dev/"


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


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
        documents = [d for d in yaml.safe_load_all(text) if isinstance(d, dict)]
    except yaml.YAMLError:
        return False
    return any(
        str(d.get("apiVersion", "")).startswith(SERVING_API) or d.get("kind") == "Service"
        for d in documents
    )


def _condition(status: Mapping[str, Any], kind: str) -> dict[str, Any]:
    for condition in status.get("conditions", []):
        if condition.get("type") == kind:
            return dict(condition)
    return {}


class Api:
    def __init__(
        self,
        control_plane: ControlPlane,
        manifests: ManifestReconciler,
        serving: LocalServing | None = None,
        *,
        token: str,
        processes: Callable[[], Awaitable[dict[str, Any]]] | None = None,
    ) -> None:
        self.cp = control_plane
        self.manifests = manifests
        self.serving = serving
        self.processes = processes
        self.app = web.Application(client_max_size=MAX_BODY, middlewares=[guard(token)])
        self.app.add_routes(
            [
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
        self, request: web.Request, text: str, wait: bool, timeout: float, started: float
    ) -> web.Response:
        serving = self._serving()
        try:
            applied = serving.apply(text, request.query.get("dir", "."))
        except ServiceError as exc:
            return _error(400, str(exc))
        served = True
        if wait:
            for item in applied:
                remaining = max(0.0, timeout - (time.monotonic() - started))
                served = (
                    await serving.wait_served(item.service.key, item.generation, remaining)
                    and served
                )
        body: dict[str, Any] = {
            "applied": [
                {
                    "kind": "Service",
                    "key": item.service.key,
                    "revision": item.revision,
                    "generation": item.generation,
                    "url": serving.url(item.service.key),
                }
                for item in applied
            ],
        }
        if wait:
            body["served"] = served
            body["seconds"] = round(time.monotonic() - started, 4)
            if not served:
                for item in body["applied"]:
                    namespace, _, name = item["key"].partition("/")
                    status = serving.store.get_status(namespace, name) or {}
                    item["ready"] = _condition(status, "Ready")
                return web.json_response(body, status=504)
        return web.json_response(body)

    # --- Knative Services ----------------------------------------------------------------

    async def get_services(self, request: web.Request) -> web.Response:
        out = []
        for service, status in self._serving().services():
            ready = _condition(status, "Ready")
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
        serving = self._serving()
        pods = serving.pods()
        statuses = {
            f"{service.namespace}/{service.name}": status for service, status in serving.services()
        }
        out = []
        for revision in serving.revisions():
            own = [p for p in pods if p["revision"] == revision.name]
            status = statuses.get(f"{revision.namespace}/{revision.service}", {})
            out.append(
                {
                    "namespace": revision.namespace,
                    "name": revision.name,
                    "service": revision.service,
                    "generation": revision.generation,
                    "createdAt": revision.to_dict()["createdAt"],
                    "ready": serving.is_ready(revision),
                    "routed": any(
                        t.get("revisionName") == revision.name for t in status.get("traffic", [])
                    ),
                    "pods": len(own),
                    "readyPods": sum(1 for p in own if p["ready"]),
                    "autoscaler": serving.scaling_status(revision),
                }
            )
        return web.json_response(out)

    async def get_routes(self, request: web.Request) -> web.Response:
        out = []
        for service, status in self._serving().services():
            routes_ready = _condition(status, "RoutesReady")
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

    async def get_pod_logs(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        path = self._serving().pod_log(name)
        if path is None:
            return _error(404, f"pod {name}: not found")
        tail = int(request.query.get("tail", "0") or 0)
        try:
            lines = path.read_text(errors="replace").splitlines(keepends=True)
        except FileNotFoundError:
            lines = []
        return web.Response(text="".join(lines[-tail:] if tail > 0 else lines))

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
                "errors": _jsonable(self.cp.translator.errors),
                "processes": await self.processes() if self.processes else {},
            }
        )

    async def get_metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=prometheus_client.generate_latest(),
            headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST},
        )

    async def get_health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")
