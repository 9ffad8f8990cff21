"""wakegate: a Knative-compatible ingress control plane for Envoy.

`wakegate up` runs the local stack in the foreground; the other commands talk to it
over its loopback API. Errors are one line on stderr with exit code 2 (1 when the
stack is running but a --wait timed out).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Coroutine, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import yaml

DEFAULT_API_PORT = 18001
DEFAULT_XDS_PORT = 18000
DEFAULT_ADMIN_PORT = 9901
KINDS = {
    "ksvc": "services",
    "service": "services",
    "services": "services",
    "revision": "revisions",
    "revisions": "revisions",
    "rev": "revisions",
    "route": "routes",
    "routes": "routes",
    "pod": "pods",
    "pods": "pods",
    "ingress": "ingresses",
    "ingresses": "ingresses",
}


class CliError(Exception):
    """An error reported to the user as one line."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


# --- parser -----------------------------------------------------------------------------


def _xds_protocol_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--xds-protocol",
        choices=["delta", "sotw"],
        default="delta",
        help="how the gateway talks xDS: delta (incremental, the default) or state of the world",
    )


DEFAULT_DATA_DIR = Path(".wakegate")


def _api_arg(p: argparse.ArgumentParser, *, stack: bool = False) -> None:
    """--api-port, and --data-dir: the stack's state (`up`), or where a client finds
    the running stack's API token."""
    p.add_argument("--api-port", type=int, default=DEFAULT_API_PORT, help="the stack's API port")
    p.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA_DIR,
        help="where the stack keeps its state, owner-only (default %(default)s)"
        if stack
        else "the running stack's data directory, where calls that change state find "
        "its API token (default %(default)s)",
    )


CONTROLLER_HELP = "run in a Kubernetes cluster as Knative Serving's ingress"


def _command(argv: Sequence[str]) -> str | None:
    """The subcommand named in `argv`: its first word that is not an option."""
    return next((word for word in argv if not word.startswith("-")), None)


class _Parser(argparse.ArgumentParser):
    """Usage mistakes are one line, like every other error, with where to look."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser(command: str | None = "controller") -> argparse.ArgumentParser:
    """The CLI's parser; `controller`'s own options (and the Kubernetes client they
    need) are only loaded when `command` is `controller`, which keeps the other
    subcommands and `--help` quick."""
    parser = _Parser(prog="wakegate", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("up", help="run the local stack in the foreground")
    p.add_argument(
        "-f",
        "--filename",
        action="append",
        type=Path,
        default=[],
        help="manifests to apply once the stack is up",
    )
    p.add_argument("--domain", default="example.com", help="domain of service hosts")
    p.add_argument("--port", type=int, default=8080, help="gateway's external HTTP port")
    p.add_argument("--internal-port", type=int, default=8081, help="cluster-local listener")
    p.add_argument("--tls-port", type=int, default=8443, help="external HTTPS listener")
    p.add_argument("--bind", default="127.0.0.1", help="gateway listener address")
    p.add_argument(
        "--xds-port",
        type=int,
        default=None,
        help="also serve xDS on 127.0.0.1:PORT, for gateways run apart (`wakegate gateway`); "
        "the stack's own use the owner-only socket DATA_DIR/xds.sock",
    )
    _xds_protocol_arg(p)
    p.add_argument("--no-gateway", action="store_true", help="serve xDS, start no Envoy")
    p.add_argument(
        "--allow-zero-initial-scale",
        action="store_true",
        help='accept autoscaling.knative.dev/initial-scale: "0": the revision is Ready '
        "without a pod and its first request wakes it (Knative's allow-zero-initial-scale)",
    )
    _api_arg(p, stack=True)
    p.set_defaults(handler=cmd_up)

    p = sub.add_parser("apply", help="apply manifests (Knative Services or KIngress)")
    p.add_argument("-f", "--filename", required=True, type=Path)
    p.add_argument("--wait", action="store_true", help="return once the gateway serves it")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds --wait may take")
    _api_arg(p)
    p.set_defaults(handler=cmd_apply)

    p = sub.add_parser("get", help="list ksvc|revisions|routes|pods|ingresses")
    p.add_argument("kind", choices=sorted(KINDS))
    p.add_argument("-n", "--namespace", default=None, help="only this namespace")
    p.add_argument("-o", "--output", choices=["table", "json", "yaml"], default="table")
    _api_arg(p)
    p.set_defaults(handler=cmd_get)

    p = sub.add_parser("describe", help="show one Service with its revisions and pods")
    p.add_argument("kind", choices=["ksvc", "service"])
    p.add_argument("name")
    p.add_argument("-n", "--namespace", default="default")
    _api_arg(p)
    p.set_defaults(handler=cmd_describe)

    p = sub.add_parser("delete", help="delete a Service (or a KIngress)")
    p.add_argument("kind", choices=["ksvc", "service", "ingress"])
    p.add_argument("name")
    p.add_argument("-n", "--namespace", default="default")
    _api_arg(p)
    p.set_defaults(handler=cmd_delete)

    p = sub.add_parser("logs", help="print a pod's log")
    p.add_argument("pod")
    p.add_argument("--tail", type=int, default=0, help="only the last N lines")
    _api_arg(p)
    p.set_defaults(handler=cmd_logs)

    p = sub.add_parser("status", help="snapshot version and each gateway's xDS status")
    _api_arg(p)
    p.set_defaults(handler=cmd_status)

    p = sub.add_parser("bootstrap", help="print an Envoy gateway bootstrap")
    p.add_argument("--node-id", default="wakegate-gateway-0")
    p.add_argument("--node-cluster", default="wakegate-gateway")
    p.add_argument("--xds-host", default="127.0.0.1")
    p.add_argument("--xds-port", type=int, default=DEFAULT_XDS_PORT)
    admin = p.add_mutually_exclusive_group()
    admin.add_argument(
        "--admin-port", type=int, default=DEFAULT_ADMIN_PORT, help="Envoy admin on 127.0.0.1"
    )
    admin.add_argument(
        "--admin-socket", type=Path, default=None, help="Envoy admin on this unix socket (0600)"
    )
    _xds_protocol_arg(p)
    p.add_argument("-o", "--output", choices=["json", "yaml"], default="yaml")
    p.set_defaults(handler=cmd_bootstrap)

    p = sub.add_parser("gateway", help="run and supervise an Envoy gateway")
    p.add_argument("--node-id", default="wakegate-gateway-0")
    p.add_argument("--node-cluster", default="wakegate-gateway")
    p.add_argument("--xds-host", default="127.0.0.1")
    p.add_argument("--xds-port", type=int, default=DEFAULT_XDS_PORT)
    _xds_protocol_arg(p)
    p.add_argument(
        "--workdir",
        type=Path,
        default=Path(".wakegate/gateway"),
        help="where the bootstrap, Envoy's log and its admin socket (admin.sock, 0600) are",
    )
    p.set_defaults(handler=cmd_gateway)

    if command == "controller":
        from wakegate.controller import add_controller_parser

        add_controller_parser(sub, CONTROLLER_HELP)
    else:
        sub.add_parser("controller", help=CONTROLLER_HELP)
    return parser  # fmt: skip


# --- the stack ------------------------------------------------------------------------------


def _stop_on_signals() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM, installed before anything slow starts."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def _unless_stopped(stop: asyncio.Event, work: Coroutine[Any, Any, None]) -> bool:
    """Run `work` unless a signal comes first; False when it was cut short."""
    task = asyncio.ensure_future(work)
    waiter = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    if task.done():
        task.result()
        return True
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return False


def cmd_up(args: argparse.Namespace) -> int:
    from wakegate.stack import LocalStack, StackConfig

    manifests = []
    for path in args.filename:
        try:
            manifests.append((path.absolute(), path.read_text()))
        except OSError as exc:
            raise CliError(f"-f {path}: {exc.strerror}") from exc
    stack = LocalStack(
        StackConfig(
            data_dir=args.data_dir,
            domain=args.domain,
            bind=args.bind,
            port=args.port,
            internal_port=args.internal_port,
            tls_port=args.tls_port,
            xds_port=args.xds_port,
            api_port=args.api_port,
            delta=args.xds_protocol == "delta",
            gateway=not args.no_gateway,
            allow_zero_initial_scale=args.allow_zero_initial_scale,
        )
    )
    stack.preflight()

    async def start() -> None:
        await stack.start()
        print(f"api      http://127.0.0.1:{stack.api_port}", flush=True)
        print(f"xds      unix:{stack.xds_socket}", flush=True)
        if stack.config.xds_port is not None:
            print(f"xds      grpc://{stack.config.xds_host}:{stack.xds_port}", flush=True)
        if stack.gateway is not None:
            print(f"gateway  http://{args.bind}:{args.port}  "
                  f"(cluster-local :{args.internal_port}, admin {stack.gateway.admin_address})",
                  flush=True)  # fmt: skip
        print(f"data     {args.data_dir}", flush=True)
        for path, text in manifests:
            reply = await _apply_in_process(stack, text, path)
            for line in reply:
                print(line, flush=True)
        print("ready", flush=True)

    async def run() -> None:
        stop = _stop_on_signals()
        try:
            if await _unless_stopped(stop, start()):
                await stop.wait()
        finally:
            await stack.stop()

    asyncio.run(run())
    return 0


async def _apply_in_process(stack: Any, text: str, path: Path) -> list[str]:
    """Apply a manifest given to `up -f` through the stack's own API."""
    import aiohttp

    query = urllib.parse.urlencode({"wait": "1", "dir": str(path.parent)})
    url = f"http://127.0.0.1:{stack.api_port}/v1/manifests?{query}"
    headers = {"Authorization": f"Bearer {stack.api_token}"}
    async with (
        aiohttp.ClientSession() as session,
        session.put(url, data=text, headers=headers) as resp,
    ):
        reply = await resp.json()
    if resp.status >= 400 and "error" in reply:
        raise CliError(f"-f {path}: {reply['error']}")
    return _applied_lines(reply, port=stack.config.port, wait=True)


def _applied_lines(reply: dict[str, Any], *, port: int | None, wait: bool) -> list[str]:
    lines = []
    for item in reply.get("applied", []):
        if item["kind"] == "Service":
            what = f"revision {item['revision']}" if item["revision"] else "unchanged"
            lines.append(f"service.serving.knative.dev/{item['key']} applied ({what})")
            url = item.get("url", "")
            if wait and url and reply.get("served"):
                lines.append(f"  {url} is served")
                host = urllib.parse.urlsplit(url).hostname
                if port is not None and host:
                    lines.append(f"  curl -H 'Host: {host}' http://127.0.0.1:{port}/")
        else:
            lines.append(f"ingress {item['key']} applied (version {reply.get('version')})")
    if wait and reply.get("served") and "seconds" in reply:
        lines.append(f"served by every gateway after {reply['seconds']} s")
    return lines


# --- the client commands -----------------------------------------------------------------


def _token(args: argparse.Namespace) -> str:
    """The running stack's API token, from its data directory."""
    from wakegate.data_dir import read_token, token_path

    token = read_token(args.data_dir)
    if token is None:
        raise CliError(
            f"api: cannot read the stack's token {token_path(args.data_dir)}: pass the "
            "--data-dir of the running `wakegate up`"
        )
    return token


def _api(
    port: int, method: str, path: str, body: bytes | None = None, *, token: str | None = None
) -> tuple[int, Any]:
    """One call to the API; `token` is needed for any call but a GET."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=body, method=method, headers=headers
    )
    try:
        with urllib.request.urlopen(req, timeout=600) as resp:
            raw, status, ctype = resp.read(), resp.status, resp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        raw, status, ctype = exc.read(), exc.code, exc.headers.get("Content-Type", "")
    except urllib.error.URLError as exc:
        raise CliError(
            f"api: cannot reach http://127.0.0.1:{port} ({exc.reason}); is `wakegate up` running?"
        ) from exc
    if "json" in ctype:
        return status, json.loads(raw or b"null")
    return status, raw.decode(errors="replace")


def _check(status: int, reply: Any) -> Any:
    if status >= 400:
        message = reply.get("error") if isinstance(reply, dict) else str(reply).strip()
        raise CliError(message or f"api answered {status}")
    return reply


def cmd_apply(args: argparse.Namespace) -> int:
    try:
        body = args.filename.read_bytes()
    except OSError as exc:
        raise CliError(f"-f {args.filename}: {exc.strerror}") from exc
    query = {"dir": str(args.filename.resolve().parent), "timeout": str(args.timeout)}
    if args.wait:
        query["wait"] = "1"
    status, reply = _api(
        args.api_port,
        "PUT",
        "/v1/manifests?" + urllib.parse.urlencode(query),
        body,
        token=_token(args),
    )
    if status == 504 and isinstance(reply, dict):
        for line in _applied_lines(reply, port=None, wait=False):
            print(line)
        reasons = [
            f"{i['key']}: {i.get('ready', {}).get('message') or i.get('ready', {}).get('reason')}"
            for i in reply.get("applied", [])
        ]
        raise CliError(f"not served within {args.timeout:g} s ({'; '.join(reasons)})", code=1)
    reply = _check(status, reply)
    port = _gateway_port(args.api_port) if args.wait else None
    for line in _applied_lines(reply, port=port, wait=args.wait):
        print(line)
    return 0


def _gateway_port(api_port: int) -> int | None:
    _, status = _api(api_port, "GET", "/v1/status")
    return status.get("gatewayPort") if isinstance(status, dict) else None


def _age(stamp: str | None) -> str:
    if not stamp:
        return "-"
    seconds = int((datetime.now(UTC) - datetime.fromisoformat(stamp)).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def _table(headers: Sequence[str], rows: list[Sequence[Any]]) -> str:
    cells = [list(map(str, headers))] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in cells
    )


def _rows(kind: str, items: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    if kind == "services":
        return ["NAME", "URL", "LATESTCREATED", "LATESTREADY", "READY", "REASON"], [
            [i["name"], i["url"], i["latestCreatedRevisionName"], i["latestReadyRevisionName"],
             i["ready"], i["reason"]]
            for i in items
        ]  # fmt: skip
    if kind == "revisions":
        headers = [
            "NAME",
            "SERVICE",
            "GEN",
            "READY",
            "ROUTED",
            "DESIRED",
            "ACTUAL",
            "MODE",
            "AGE",
            "LAST DECISION",
        ]
        return headers, [
            [i["name"], i["service"], i["generation"], i["ready"], i["routed"],
             "-" if i["autoscaler"]["desired"] is None else i["autoscaler"]["desired"],
             f"{i['readyPods']}/{i['pods']}", i["autoscaler"]["mode"], _age(i["createdAt"]),
             i["autoscaler"]["reason"]]
            for i in items
        ]  # fmt: skip
    if kind == "routes":
        return ["NAME", "URL", "TRAFFIC", "READY", "REASON"], [
            [i["name"], i["url"],
             ",".join(f"{t['percent']}%->{t['revisionName']}" for t in i["traffic"]) or "-",
             i["ready"], i["reason"]]
            for i in items
        ]  # fmt: skip
    if kind == "pods":
        return ["NAME", "READY", "STATUS", "RESTARTS", "ADDRESS", "AGE", "REASON"], [
            [i["name"], "1/1" if i["ready"] else "0/1", i["phase"], i["restarts"],
             f"{i['address']}:{i['port']}" if i["port"] else "-", _age(i["startedAt"]),
             i["reason"] or ""]
            for i in items
        ]  # fmt: skip
    return ["NAME", "HOSTS"], [[i["key"], ",".join(i["hosts"])] for i in items]


def cmd_get(args: argparse.Namespace) -> int:
    kind = KINDS[args.kind]
    items = _check(*_api(args.api_port, "GET", f"/v1/{kind}"))
    if args.namespace:
        items = [
            i
            for i in items
            if i.get("namespace", i.get("key", "").partition("/")[0]) == args.namespace
        ]
    if args.output == "json":
        print(json.dumps(items, indent=2))
    elif args.output == "yaml":
        print(yaml.safe_dump(items, sort_keys=False), end="")
    elif not items:
        print("No resources found.")
    else:
        print(_table(*_rows(kind, items)))
    return 0


def cmd_describe(args: argparse.Namespace) -> int:
    reply = _check(*_api(args.api_port, "GET", f"/v1/services/{args.namespace}/{args.name}"))
    print(yaml.safe_dump(reply, sort_keys=False), end="")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    path = "ingresses" if args.kind == "ingress" else "services"
    reply = _check(
        *_api(
            args.api_port,
            "DELETE",
            f"/v1/{path}/{args.namespace}/{args.name}",
            token=_token(args),
        )
    )
    print(f"{args.kind} {reply['deleted']} deleted")
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    text = _check(*_api(args.api_port, "GET", f"/v1/pods/{args.pod}/logs?tail={args.tail}"))
    sys.stdout.write(text)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    print(json.dumps(_check(*_api(args.api_port, "GET", "/v1/status")), indent=2))
    return 0


# --- the gateway on its own ------------------------------------------------------------------


def _bootstrap(args: argparse.Namespace, admin_socket: Path | None = None) -> dict[str, object]:
    from wakegate.xds.bootstrap import build_bootstrap

    return build_bootstrap(
        node_id=args.node_id,
        node_cluster=args.node_cluster,
        xds_host=args.xds_host,
        xds_port=args.xds_port,
        admin_port=getattr(args, "admin_port", 0),
        admin_socket=str(admin_socket) if admin_socket is not None else None,
        delta=args.xds_protocol == "delta",
    )


def cmd_bootstrap(args: argparse.Namespace) -> int:
    config = _bootstrap(args, args.admin_socket and args.admin_socket.absolute())
    if args.output == "json":
        print(json.dumps(config, indent=2))
    else:
        print(yaml.safe_dump(config, sort_keys=False), end="")
    return 0


def cmd_gateway(args: argparse.Namespace) -> int:
    from wakegate.envoy_process import EnvoyGateway

    async def run() -> None:
        stop = _stop_on_signals()
        admin = args.workdir.absolute() / "admin.sock"
        gateway = EnvoyGateway(_bootstrap(args, admin), args.workdir, supervise=True)
        try:
            await gateway.start(wait_live=False)
            print(f"envoy gateway running (admin {gateway.admin_address}, log {gateway.log_path})")
            await stop.wait()
        finally:
            await gateway.stop()

    asyncio.run(run())
    return 0


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    args = build_parser(_command(words)).parse_args(words)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from wakegate.envoy_process import GatewayError
    from wakegate.ingress.kingress import IngressError
    from wakegate.ingress.manifests import ManifestError
    from wakegate.reconciler.local.store import StoreError
    from wakegate.serving.fields import ServiceError

    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        return 130
    except CliError as exc:
        print(f"wakegate: {exc}", file=sys.stderr)
        return exc.code
    except (
        ManifestError,
        IngressError,
        ServiceError,
        GatewayError,
        StoreError,
        OSError,
    ) as exc:
        print(f"wakegate: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
