"""The loopback-only HTTP API of a running stack.

PUT /v1/manifests        apply a multi-document YAML body (all or nothing); `?wait=1`
                         returns once every connected gateway ACKed the result
GET /v1/ingresses        the applied ingresses
DELETE /v1/ingresses/{namespace}/{name}
GET /v1/status           snapshot version and per-gateway xDS status (ACKs, NACKs)
GET /metrics             Prometheus metrics
GET /healthz
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Mapping
from dataclasses import fields, is_dataclass
from typing import Any

import prometheus_client
from aiohttp import web

from wakegate.controlplane import ControlPlane
from wakegate.reconciler.manifests import ManifestError, ManifestReconciler, load_manifests

MAX_BODY = 16 * 1024 * 1024


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


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


class Api:
    def __init__(self, control_plane: ControlPlane, reconciler: ManifestReconciler) -> None:
        self.cp = control_plane
        self.reconciler = reconciler
        self.app = web.Application(client_max_size=MAX_BODY)
        self.app.add_routes(
            [
                web.put("/v1/manifests", self.put_manifests),
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
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        server = site._server
        assert server is not None and server.sockets
        return int(server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def put_manifests(self, request: web.Request) -> web.Response:
        text = await request.text()
        try:
            manifests = load_manifests(text, source="body")
        except ManifestError as exc:
            return _error(400, str(exc))
        self.reconciler.apply(manifests)
        started = time.monotonic()
        version = await self.cp.flush()
        body: dict[str, Any] = {
            "version": version,
            "applied": [i.key for i in manifests.ingresses],
        }
        if request.query.get("wait") in {"1", "true"}:
            timeout = float(request.query.get("timeout", "30"))
            served = await self.cp.server.wait_acked(self.cp.group, version, timeout)
            body["served"] = served
            body["seconds"] = round(time.monotonic() - started, 4)
            if not served:
                return web.json_response(body, status=504)
        return web.json_response(body)

    async def get_ingresses(self, request: web.Request) -> web.Response:
        return web.json_response(
            [
                {"key": i.key, "hosts": sorted({h for r in i.rules for h in r.hosts})}
                for i in self.cp.ingresses()
            ]
        )

    async def delete_ingress(self, request: web.Request) -> web.Response:
        key = f"{request.match_info['namespace']}/{request.match_info['name']}"
        if not self.reconciler.delete_ingress(key):
            return _error(404, f"ingress {key}: not found")
        return web.json_response({"deleted": key, "version": await self.cp.flush()})

    async def get_status(self, request: web.Request) -> web.Response:
        last = self.cp.last
        return web.json_response(
            {
                "version": last.version if last else None,
                "gateways": _jsonable(self.cp.server.nodes()),
            }
        )

    async def get_metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=prometheus_client.generate_latest(),
            headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST},
        )

    async def get_health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")
