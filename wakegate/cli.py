"""wakegate: a Knative-compatible ingress control plane for Envoy."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import urllib.error
import urllib.request
from pathlib import Path

import yaml

DEFAULT_API_PORT = 18001
DEFAULT_XDS_PORT = 18000
DEFAULT_ADMIN_PORT = 9901


class CliError(Exception):
    """An error reported to the user as one line, exit code 2."""


def _add_gateway_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--node-id", default="wakegate-gateway-0", help="Envoy node id")
    p.add_argument("--node-cluster", default="wakegate-gateway", help="Envoy node cluster")
    p.add_argument("--admin-port", type=int, default=DEFAULT_ADMIN_PORT)
    p.add_argument("--delta", action="store_true", help="use delta (incremental) xDS")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wakegate", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("bootstrap", help="print an Envoy gateway bootstrap")
    _add_gateway_args(p)
    p.add_argument("--xds-host", default="127.0.0.1")
    p.add_argument("--xds-port", type=int, default=DEFAULT_XDS_PORT)
    p.add_argument("-o", "--output", choices=["json", "yaml"], default="yaml")
    p.set_defaults(handler=cmd_bootstrap)

    p = sub.add_parser("gateway", help="run and supervise an Envoy gateway")
    _add_gateway_args(p)
    p.add_argument("--xds-host", default="127.0.0.1")
    p.add_argument("--xds-port", type=int, default=DEFAULT_XDS_PORT)
    p.add_argument(
        "--workdir",
        type=Path,
        default=Path(".wakegate/gateway"),
        help="where the bootstrap and Envoy's log are written",
    )
    p.set_defaults(handler=cmd_gateway)

    p = sub.add_parser("serve", help="run the control plane (and a gateway) from manifests")
    _add_gateway_args(p)
    p.add_argument("-f", "--filename", action="append", type=Path, default=[])
    p.add_argument("--port", type=int, default=8080, help="external HTTP listener port")
    p.add_argument("--internal-port", type=int, default=8081, help="cluster-local listener")
    p.add_argument("--tls-port", type=int, default=8443, help="external HTTPS listener")
    p.add_argument("--bind", default="127.0.0.1", help="gateway listener address")
    p.add_argument("--xds-host", default="127.0.0.1")
    p.add_argument("--xds-port", type=int, default=DEFAULT_XDS_PORT)
    p.add_argument("--api-port", type=int, default=DEFAULT_API_PORT)
    p.add_argument("--data-dir", type=Path, default=Path(".wakegate"))
    p.add_argument("--no-gateway", action="store_true", help="serve xDS only")
    p.set_defaults(handler=cmd_serve)

    p = sub.add_parser("apply", help="apply manifests to a running stack")
    p.add_argument("-f", "--filename", required=True, type=Path)
    p.add_argument("--wait", action="store_true", help="return once the gateways serve it")
    p.add_argument("--api-port", type=int, default=DEFAULT_API_PORT)
    p.set_defaults(handler=cmd_apply)

    p = sub.add_parser("status", help="show the snapshot version and gateway xDS status")
    p.add_argument("--api-port", type=int, default=DEFAULT_API_PORT)
    p.set_defaults(handler=cmd_status)
    return parser


def _bootstrap(args: argparse.Namespace) -> dict[str, object]:
    from wakegate.xds.bootstrap import build_bootstrap

    return build_bootstrap(
        node_id=args.node_id,
        node_cluster=args.node_cluster,
        xds_host=args.xds_host,
        xds_port=args.xds_port,
        admin_port=args.admin_port,
        delta=args.delta,
    )


def cmd_bootstrap(args: argparse.Namespace) -> int:
    config = _bootstrap(args)
    if args.output == "json":
        print(json.dumps(config, indent=2))
    else:
        print(yaml.safe_dump(config, sort_keys=False), end="")
    return 0


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def cmd_gateway(args: argparse.Namespace) -> int:
    from wakegate.envoy_process import EnvoyGateway

    async def run() -> None:
        gateway = EnvoyGateway(_bootstrap(args), args.workdir, supervise=True)
        await gateway.start(wait_live=False)
        print(f"envoy gateway running (admin {gateway.admin_url}, log {gateway.log_path})")
        try:
            await _until_signalled()
        finally:
            await gateway.stop()

    asyncio.run(run())
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from wakegate.api import Api
    from wakegate.controlplane import ControlPlane
    from wakegate.envoy_process import EnvoyGateway, check_port_free
    from wakegate.reconciler.manifests import ManifestReconciler, load_manifests
    from wakegate.xds.translate import GatewayConfig

    manifests = [load_manifests(path.read_text(), source=str(path)) for path in args.filename]

    async def run() -> None:
        cp = ControlPlane(
            GatewayConfig(
                external_port=args.port,
                internal_port=args.internal_port,
                tls_port=args.tls_port,
                bind_address=args.bind,
                https_redirect_port=args.tls_port,
            ),
            group=args.node_cluster,
        )
        reconciler = ManifestReconciler(cp)
        for m in manifests:
            reconciler.apply(m)
        gateway = None
        if not args.no_gateway:
            for port, flag in ((args.port, "--port"), (args.internal_port, "--internal-port")):
                check_port_free(port, args.bind, purpose=f"gateway listener ({flag})")
            check_port_free(args.admin_port, "127.0.0.1", purpose="Envoy admin (--admin-port)")
            gateway = EnvoyGateway({}, args.data_dir / "gateway", supervise=True)
        xds_port = await cp.start(args.xds_host, args.xds_port)
        api = Api(cp, reconciler)
        api_port = await api.start("127.0.0.1", args.api_port)
        try:
            print(f"xds      grpc://{args.xds_host}:{xds_port}", flush=True)
            print(f"api      http://127.0.0.1:{api_port}", flush=True)
            if gateway is not None:
                args.xds_port = xds_port
                gateway.bootstrap = _bootstrap(args)
                await gateway.start()
                await cp.wait_served(timeout=10)
                print(
                    f"gateway  http://{args.bind}:{args.port} (cluster-local :{args.internal_port})"
                )
                for ingress in cp.ingresses():
                    for rule in ingress.rules:
                        for host in rule.hosts:
                            print(f"  curl -H 'Host: {host}' http://127.0.0.1:{args.port}/")
            print("ready", flush=True)
            await _until_signalled()
        finally:
            if gateway is not None:
                await gateway.stop()
            await api.stop()
            await cp.stop()

    asyncio.run(run())
    return 0


def _api(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")
    except urllib.error.URLError as exc:
        raise CliError(
            f"api: cannot reach http://127.0.0.1:{port} ({exc.reason}); is the stack running?"
        ) from exc


def cmd_apply(args: argparse.Namespace) -> int:
    try:
        body = args.filename.read_bytes()
    except OSError as exc:
        raise CliError(f"-f {args.filename}: {exc.strerror}") from exc
    query = "?wait=1" if args.wait else ""
    status, reply = _api(args.api_port, "PUT", f"/v1/manifests{query}", body)
    if status >= 400:
        raise CliError(reply.get("error") or f"not served within the timeout: {reply}")
    for key in reply.get("applied", []):
        print(f"ingress {key} applied (version {reply['version']})")
    if args.wait:
        print(f"served by every gateway in {reply.get('seconds')} s")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    _, reply = _api(args.api_port, "GET", "/v1/status")
    print(json.dumps(reply, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from wakegate.envoy_process import GatewayError
    from wakegate.ingress.kingress import IngressError
    from wakegate.reconciler.manifests import ManifestError

    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        return 130
    except (CliError, ManifestError, IngressError, GatewayError, OSError) as exc:
        print(f"wakegate: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
