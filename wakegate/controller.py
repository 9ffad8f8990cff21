"""`wakegate controller`: cluster mode, Knative Serving's ingress inside Kubernetes.

Every replica watches the cluster and serves xDS to the Envoy gateways; the replica
holding the leader Lease also writes KIngress status. With `--gateway-service`, the
leader marks an ingress Ready once every ready gateway pod behind that Service answers
its readiness probe, whichever replica the gateway is connected to; without it, once
the gateways connected to the leader ACKed it. `/healthz` answers 200 while
the process runs; `/readyz` answers 200 once the first full list of every source was
translated and published, which is also when the xDS port opens, so a gateway never
receives a snapshot built from a partial view of the cluster.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
from aiohttp import web
from kubernetes.aio.config import ConfigException
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from wakegate.reconciler.cluster.gateway_probe import (
    DEFAULT_PROBE_PORT,
    GatewayProber,
    GatewayService,
    parse_gateway_service,
    parse_probe_port,
)
from wakegate.reconciler.cluster.kingress_status import LoadBalancers, service_domain
from wakegate.reconciler.cluster.kubernetes import KubeApi, load_configuration
from wakegate.reconciler.cluster.leader import LeaderElector
from wakegate.reconciler.cluster.objects import ACTIVATOR_SERVICE, DEFAULT_INGRESS_CLASS
from wakegate.reconciler.cluster.reconciler import ClusterReconciler
from wakegate.xds.controlplane import DEFAULT_GROUP, ControlPlane
from wakegate.xds.proxy_config import report as proxy_config_report
from wakegate.xds.translate import GatewayConfig

log = logging.getLogger(__name__)

DEFAULT_XDS_PORT = 18000
DEFAULT_METRICS_PORT = 9090
DEFAULT_HEALTH_PORT = 8086
DEFAULT_EXTERNAL_ADDRESS = "wakegate-gateway.knative-serving"
DEFAULT_INTERNAL_ADDRESS = "wakegate-gateway-internal.knative-serving"
DEFAULT_PROBE_CONCURRENCY = 16


class ArgumentError(ValueError):
    """A controller flag with a bad value; the message names the flag."""


def add_controller_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    help_text: str,
) -> argparse.ArgumentParser:
    """Add `controller` to a CLI's subcommands; its handler runs the controller."""
    p = subparsers.add_parser("controller", help=help_text)
    p.add_argument(
        "--kubeconfig",
        type=Path,
        default=None,
        help="kubeconfig file (default: in-cluster, else ~/.kube/config)",
    )
    p.add_argument("--xds-host", default="0.0.0.0", help="xDS listen address")
    p.add_argument("--xds-port", type=int, default=DEFAULT_XDS_PORT)
    p.add_argument(
        "--xds-tls-dir",
        type=Path,
        default=None,
        help="directory with ca.crt, tls.crt, tls.key: serve xDS over mutual TLS",
    )
    p.add_argument(
        "--metrics-host",
        default="0.0.0.0",
        help="Prometheus /metrics listen address (default all interfaces, as in a pod)",
    )
    p.add_argument(
        "--metrics-port", type=int, default=DEFAULT_METRICS_PORT, help="Prometheus /metrics port"
    )
    p.add_argument(
        "--health-host",
        default="0.0.0.0",
        help="/healthz and /readyz listen address (default all interfaces, as in a pod)",
    )
    p.add_argument(
        "--health-port", type=int, default=DEFAULT_HEALTH_PORT, help="/healthz and /readyz port"
    )
    p.add_argument(
        "--ingress-class",
        default=DEFAULT_INGRESS_CLASS,
        help="the networking.knative.dev/ingress.class annotation to serve",
    )
    p.add_argument(
        "--gateway-external-address",
        default=DEFAULT_EXTERNAL_ADDRESS,
        help="DNS name of the gateway's external Service (name.namespace "
        "gets --domain-internal-suffix appended)",
    )
    p.add_argument(
        "--gateway-internal-address",
        default=DEFAULT_INTERNAL_ADDRESS,
        help="DNS name of the gateway's cluster-local Service",
    )
    p.add_argument(
        "--gateway-service",
        default=None,
        metavar="NAMESPACE/NAME",
        help="the gateway's cluster-local Service: an ingress is Ready once every ready "
        "pod behind it answers its readiness probe (default: once the gateways connected "
        "to the leader ACKed it)",
    )
    p.add_argument(
        "--gateway-probe-port",
        default=str(DEFAULT_PROBE_PORT),
        metavar="PORT",
        help="the gateway pods' cluster-local listener: a port number, or the name of "
        "the --gateway-service port (resolved per EndpointSlice)",
    )
    p.add_argument(
        "--gateway-probe-concurrency",
        default=str(DEFAULT_PROBE_CONCURRENCY),
        metavar="N",
        help="readiness probes in flight at most",
    )
    p.add_argument(
        "--domain-internal-suffix",
        default="svc.cluster.local",
        help="suffix completing name.namespace gateway addresses",
    )
    p.add_argument("--leader-election-namespace", default="knative-serving")
    p.add_argument(
        "--leader-election-id",
        default="wakegate-controller",
        help="name of the coordination.k8s.io Lease",
    )
    p.add_argument(
        "--node-cluster",
        default=DEFAULT_GROUP,
        help="the gateways' node cluster (--service-cluster) served",
    )
    p.set_defaults(handler=_cmd_controller)
    return p  # fmt: skip


def _cmd_controller(args: argparse.Namespace) -> int:
    try:
        gateway_probe(args)
        asyncio.run(run_controller(args))
    except ArgumentError as exc:
        print(f"wakegate: {exc}", file=sys.stderr)
        return 2
    except ConfigException as exc:
        print(f"wakegate: Kubernetes configuration: {exc}", file=sys.stderr)
        return 2
    return 0


def gateway_probe(args: argparse.Namespace) -> tuple[GatewayService, int] | None:
    """The gateway Service to probe and the probe concurrency, or None when not probing;
    `ArgumentError` names the flag of a bad value."""
    if args.gateway_service is None:
        return None
    try:
        namespace, name = parse_gateway_service(args.gateway_service)
    except ValueError as exc:
        raise ArgumentError(f"--gateway-service: {exc}") from None
    try:
        port = parse_probe_port(args.gateway_probe_port)
    except ValueError as exc:
        raise ArgumentError(f"--gateway-probe-port: {exc}") from None
    text = str(args.gateway_probe_concurrency).strip()
    if not text.isdigit() or int(text) < 1:
        raise ArgumentError(
            f"--gateway-probe-concurrency: expected a positive number, got {text!r}"
        )
    return GatewayService(namespace, name, port), int(text)


def xds_credentials(tls_dir: Path) -> grpc.ServerCredentials:
    """mTLS server credentials: gateways must present a certificate signed by ca.crt."""
    try:
        ca = (tls_dir / "ca.crt").read_bytes()
        cert = (tls_dir / "tls.crt").read_bytes()
        key = (tls_dir / "tls.key").read_bytes()
    except OSError as exc:
        raise OSError(f"--xds-tls-dir {tls_dir}: {exc.strerror}: {exc.filename}") from exc
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=True
    )


def cluster_gateway(*, readiness_probes: bool = False) -> GatewayConfig:
    """Gateway listeners in a pod: all interfaces, 8080 external, 8081 internal, 8443 TLS;
    with `readiness_probes`, the status virtual host on the internal one."""
    return GatewayConfig(
        external_port=8080,
        internal_port=DEFAULT_PROBE_PORT,
        tls_port=8443,
        readiness_probes=readiness_probes,
    )


@contextlib.asynccontextmanager
async def _http(host: str, port: int, routes: list[web.RouteDef]) -> AsyncIterator[None]:
    app = web.Application()
    app.add_routes(routes)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        yield
    finally:
        await runner.cleanup()


async def start_control_plane(
    cp: ControlPlane, host: str, port: int, credentials: grpc.ServerCredentials | None = None
) -> int:
    """Start `cp` serving xDS on host:port, over mutual TLS when given `credentials`."""
    return await cp.start(host, port, credentials=credentials)


async def run_controller(args: argparse.Namespace, stop: asyncio.Event | None = None) -> None:
    """Run until SIGINT/SIGTERM (or until `stop` is set, when given)."""
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
    probe = gateway_probe(args)
    credentials = xds_credentials(args.xds_tls_dir) if args.xds_tls_dir else None
    configuration = await load_configuration(args.kubeconfig)
    api = KubeApi.from_configuration(configuration)
    cp = ControlPlane(cluster_gateway(readiness_probes=probe is not None), group=args.node_cluster)
    suffix = args.domain_internal_suffix
    balancers = LoadBalancers(
        external=service_domain(args.gateway_external_address, suffix),
        internal=service_domain(args.gateway_internal_address, suffix),
    )
    elector: LeaderElector | None = None
    reconciler = ClusterReconciler(
        api,
        cp,
        load_balancers=balancers,
        ingress_class=args.ingress_class,
        activator=ACTIVATOR_SERVICE,
        may_write_status=lambda: elector is not None and elector.is_leader,
        gateway_service=probe[0] if probe is not None else None,
        prober=GatewayProber(concurrency=probe[1]) if probe is not None else None,
    )
    elector = LeaderElector(
        api,
        namespace=args.leader_election_namespace,
        name=args.leader_election_id,
        on_started_leading=reconciler.resync_status,
        on_stopped_leading=reconciler.resync_status,
    )
    ready = asyncio.Event()

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        if ready.is_set():
            return web.Response(text="ok\n")
        return web.Response(status=503, text="waiting for the first full list\n")

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def proxy_config(request: web.Request) -> web.Response:
        """What the control plane serves the gateways, for a host or a KIngress."""
        try:
            body = proxy_config_report(
                cp,
                request.match_info["kind"],
                host=request.query.get("host", ""),
                ingress=request.query.get("ingress", ""),
            )
        except KeyError as exc:
            return web.json_response({"error": str(exc.args[0])}, status=404)
        return web.json_response(body)

    async def serve_xds() -> None:
        port = await start_control_plane(cp, args.xds_host, args.xds_port, credentials)
        ready.set()
        log.info("serving xDS on %s:%d to node cluster %s", args.xds_host, port, cp.group)

    tasks: list[asyncio.Task[None]] = []

    async def shut_down() -> None:
        ready.clear()
        for task in reversed(tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(api.close)
        stack.push_async_callback(cp.stop)
        await stack.enter_async_context(
            _http(
                args.health_host,
                args.health_port,
                [web.get("/healthz", healthz), web.get("/readyz", readyz)],
            )
        )
        await stack.enter_async_context(
            _http(
                args.metrics_host,
                args.metrics_port,
                [
                    web.get("/metrics", metrics),
                    web.get("/debug/proxy-config/{kind}", proxy_config),
                ],
            )
        )
        stack.push_async_callback(shut_down)
        tasks.append(asyncio.create_task(reconciler.run(serve_xds), name="cluster-reconciler"))
        tasks.append(asyncio.create_task(elector.run(), name="leader-election"))
        stopping = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait([stopping, *tasks], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        for task in tasks:
            if task.done():
                task.result()
