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
import shutil
import signal
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Coroutine, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import yaml

from wakegate.ingress.documents import load_all

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
    "config": "config",
    "configmap": "config",
    "configmaps": "config",
    "cm": "config",
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


def _kind(value: str) -> tuple[str, str]:
    """KIND or KIND/NAME → (the API's kind, name or "")."""
    word, _, name = value.partition("/")
    if word.lower() not in KINDS:
        raise argparse.ArgumentTypeError(
            f"got {word!r}, expected one of {', '.join(sorted(KINDS))}"
        )
    return KINDS[word.lower()], name


def _output(value: str) -> Any:
    from wakegate.output import OutputError, parse_output

    try:
        return parse_output(value)
    except OutputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _duration(value: str) -> float:
    from wakegate.output import parse_duration

    try:
        return parse_duration(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _condition(value: str) -> Any:
    from wakegate.output import parse_condition

    try:
        return parse_condition(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


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

    p = sub.add_parser("get", help="list ksvc|revisions|routes|pods|ingresses, or get one")
    p.add_argument("kind", type=_kind, help="KIND or KIND/NAME: " + ", ".join(sorted(KINDS)))
    p.add_argument("name", nargs="?", help="one object (in --namespace, default: default)")
    p.add_argument("-n", "--namespace", default=None, help="only this namespace")
    p.add_argument(
        "-o", "--output", type=_output, default=_output("table"), metavar="FORMAT",
        help="json, yaml (Knative-shaped objects), name or jsonpath=TEMPLATE",
    )  # fmt: skip
    p.add_argument("-w", "--watch", action="store_true", help="print rows again as they change")
    _api_arg(p)
    p.set_defaults(handler=cmd_get)

    p = sub.add_parser("wait", help="wait until an object has a condition (like kubectl wait)")
    p.add_argument("target", type=_kind, metavar="KIND/NAME", help="e.g. ksvc/helloworld-go")
    p.add_argument("name", nargs="?", help=argparse.SUPPRESS)
    p.add_argument(
        "--for", dest="condition", type=_condition, required=True, metavar="condition=TYPE",
        help="condition=Ready, or condition=TYPE=STATUS",
    )  # fmt: skip
    p.add_argument("--timeout", type=_duration, default=30.0, help="60s, 2m, …; default 30s")
    p.add_argument("-n", "--namespace", default="default")
    _api_arg(p)
    p.set_defaults(handler=cmd_wait)

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

    p = sub.add_parser("logs", help="print a pod's log, or every pod's of a Service")
    p.add_argument("pod", metavar="POD | ksvc NAME", help="a pod, or ksvc NAME (or ksvc/NAME)")
    p.add_argument("name", nargs="?", help=argparse.SUPPRESS)
    p.add_argument("-f", "--follow", action="store_true", help="go on printing new lines")
    p.add_argument("--tail", type=int, default=0, help="only the last N lines (of each pod)")
    p.add_argument("-n", "--namespace", default="default")
    _api_arg(p)
    p.set_defaults(handler=cmd_logs)

    p = sub.add_parser(
        "proxy-config",
        help="what the gateway gets for a host or a Service, and where it differs",
    )
    p.add_argument("kind", choices=["listeners", "routes", "clusters", "endpoints"])
    p.add_argument("--host", help="only what this host reaches")
    p.add_argument("--service", help="only what this Service's hosts reach (in --namespace)")
    p.add_argument("-n", "--namespace", default="default")
    p.add_argument("-o", "--output", choices=["table", "yaml", "json"], default="table")
    _api_arg(p)
    p.set_defaults(handler=cmd_proxy_config)

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
        print(f"ui       http://127.0.0.1:{stack.api_port}/", flush=True)
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
    notes = [f"warning: {note}" for note in reply.get("notes", [])]
    return [*notes, *_applied_lines(reply, port=stack.config.port, wait=True)]


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
            if wait and item.get("outcome") == "failed":
                lines.append(f"  failed: {item.get('reason', '')}")
        elif item["kind"] == "ConfigMap":
            lines.append(f"configmap/{item['key']} configured")
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


def _stream(port: int, path: str) -> None:
    """GET `path` and copy the body to stdout as it arrives (for logs that follow)."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    try:
        resp = urllib.request.urlopen(req, timeout=None)
    except urllib.error.HTTPError as exc:
        ctype = exc.headers.get("Content-Type", "")
        raw = exc.read()
        _check(exc.code, json.loads(raw or b"null") if "json" in ctype else raw.decode())
        return
    except urllib.error.URLError as exc:
        raise CliError(
            f"api: cannot reach http://127.0.0.1:{port} ({exc.reason}); is `wakegate up` running?"
        ) from exc
    with resp:
        out = sys.stdout.buffer
        while chunk := resp.read1(65536):
            out.write(chunk)
            out.flush()


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
    path = "/v1/manifests?" + urllib.parse.urlencode(query)
    token = _token(args)

    def put() -> tuple[int, Any]:
        return _api(args.api_port, "PUT", path, body, token=token)

    if args.wait and sys.stdout.isatty():
        status, reply = _with_progress(args.api_port, put, _service_keys(body))
    else:
        status, reply = put()
    if isinstance(reply, dict):
        for note in reply.get("notes", []):
            print(f"warning: {note}", file=sys.stderr)
    if status in (422, 504) and isinstance(reply, dict):
        return _unserved(reply, args.timeout)
    reply = _check(status, reply)
    port = _gateway_port(args.api_port) if args.wait else None
    for line in _applied_lines(reply, port=port, wait=args.wait):
        print(line)
    return 0


def _unserved(reply: dict[str, Any], timeout: float) -> int:
    """What `apply --wait` prints when not every Service is served: each one's outcome,
    then one line (stderr) naming the ones that failed or are still waiting; exit 1."""
    problems = []
    for item in reply.get("applied", []):
        if item["kind"] != "Service":
            print(f"configmap/{item['key']} configured")
            continue
        what = f"revision {item['revision']}" if item["revision"] else "unchanged"
        print(f"service.serving.knative.dev/{item['key']} applied ({what})")
        outcome, reason = item.get("outcome"), item.get("reason") or ""
        if outcome == "served":
            print(f"  {item.get('url', '')} is served")
        elif outcome == "failed":
            print(f"  failed: {reason}")
            problems.append(f"{item['key']}: {reason}")
        else:
            print(f"  not served within {timeout:g} s")
            problems.append(f"{item['key']}: not served within {timeout:g} s ({reason})")
    print("error: " + "; ".join(problems), file=sys.stderr)
    return 1


PROGRESS_INTERVAL_S = 0.3


def _service_keys(body: bytes) -> list[tuple[str, str]]:
    """(namespace, name) of each Knative Service in a manifest, for progress lines."""
    keys = []
    try:
        for doc in load_all(body):
            if isinstance(doc, dict) and doc.get("kind") == "Service":
                metadata = doc.get("metadata") or {}
                keys.append(
                    (str(metadata.get("namespace") or "default"), str(metadata.get("name")))
                )
    except yaml.YAMLError:
        pass  # the API names the problem
    return keys


def _progress_line(api_port: int, keys: list[tuple[str, str]]) -> str:
    """`hello: revision hello-00002 pods ready 1/1 · gateways serving 1/1`."""
    parts = []
    services = {
        (s["namespace"], s["name"]): s for s in _check(*_api(api_port, "GET", "/v1/services"))
    }
    revisions = {
        (r["namespace"], r["name"]): r for r in _check(*_api(api_port, "GET", "/v1/revisions"))
    }
    for namespace, name in keys:
        latest = services.get((namespace, name), {}).get("latestCreatedRevisionName", "")
        revision = revisions.get((namespace, latest))
        if revision is None:
            parts.append(f"{name}: creating")
            continue
        desired = revision["autoscaler"].get("desired")
        wanted = "?" if desired is None else desired
        parts.append(f"{name}: {latest} pods ready {revision['readyPods']}/{wanted}")
    status = _check(*_api(api_port, "GET", "/v1/status"))
    connected = [g for g in status.get("gateways", []) if g.get("connected")]
    serving = sum(1 for g in connected if status.get("current", {}).get(g["node_id"]))
    parts.append(f"gateways serving {serving}/{len(connected)}")
    return " · ".join(parts)


def _with_progress(api_port: int, call: Any, keys: list[tuple[str, str]]) -> tuple[int, Any]:
    """Run the blocking `call` while one progress line is redrawn on the terminal."""
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        future = pool.submit(call)
        shown = ""
        while True:
            try:
                return future.result(timeout=PROGRESS_INTERVAL_S)  # type: ignore[no-any-return]
            except concurrent.futures.TimeoutError:
                pass
            finally:
                if future.done() and shown:
                    sys.stdout.write("\r\x1b[K")
                    sys.stdout.flush()
            try:
                line = _progress_line(api_port, keys)
            except CliError:
                continue
            width = shutil.get_terminal_size().columns - 1
            shown = line[:width]
            sys.stdout.write("\r\x1b[K" + shown)
            sys.stdout.flush()


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


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


def _cold_starts(figures: dict[str, Any] | None) -> str:
    """`3 (latest 1.20s, p95 1.45s)`: requests that got a pod after waiting at zero."""
    if not figures or not (figures.get("count") or figures.get("waited")):
        return "-"
    return (
        f"{figures['count']} (latest {_seconds(figures['latestSeconds'])}, "
        f"p95 {_seconds(figures['p95Seconds'])})"
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
            "COLD STARTS",
            "LAST DECISION",
        ]
        return headers, [
            [i["name"], i["service"], i["generation"], i["ready"], i["routed"],
             "-" if i["autoscaler"]["desired"] is None else i["autoscaler"]["desired"],
             f"{i['readyPods']}/{i['pods']}", i["autoscaler"]["mode"], _age(i["createdAt"]),
             _cold_starts(i.get("coldStarts")), i["autoscaler"]["reason"]]
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
    if kind == "config":
        return ["CONFIGMAP", "KEY", "VALUE", "SOURCE"], [
            [i["name"], i["key"], i["value"] or '""', i["source"]] for i in items
        ]
    return ["NAME", "HOSTS"], [[i["key"], ",".join(i["hosts"])] for i in items]


KIND_NAMES = {
    "services": "ksvc",
    "revisions": "revision",
    "routes": "route",
    "pods": "pod",
    "ingresses": "ingress",
    "config": "configmap",
}
WATCH_INTERVAL_S = 1.0


def _target(args: argparse.Namespace, kind: str, name: str) -> tuple[str, str | None]:
    """The name given as KIND/NAME or as a second word, and the namespace to look in."""
    if name and args.name:
        raise CliError(f"name: got both {name!r} and {args.name!r}, expected one")
    name = name or args.name or ""
    home = "knative-serving" if kind == "config" else "default"
    namespace = args.namespace or (home if name else None)
    return name, namespace


def _object_path(kind: str, name: str, namespace: str | None) -> str:
    if name:
        return f"/v1/objects/{kind}/{namespace}/{urllib.parse.quote(name)}"
    query = "?" + urllib.parse.urlencode({"namespace": namespace}) if namespace else ""
    return f"/v1/objects/{kind}{query}"


def _in(namespace: str | None, name: str, item: dict[str, Any]) -> bool:
    item_namespace, _, key_name = str(item.get("key", "")).partition("/")
    item_namespace = item.get("namespace", item_namespace)
    item_name = item.get("name", key_name)
    return (namespace is None or item_namespace == namespace) and (not name or item_name == name)


def _table_rows(
    api_port: int, kind: str, name: str, namespace: str | None, *, required: bool = True
) -> tuple[list[str], list[list[Any]]]:
    items = [i for i in _check(*_api(api_port, "GET", f"/v1/{kind}")) if _in(namespace, name, i)]
    if name and not items and required:
        raise CliError(f"{KIND_NAMES[kind]} {namespace}/{name}: not found")
    return _rows(kind, items)


def cmd_get(args: argparse.Namespace) -> int:
    from wakegate.output import OutputError, change_token, render_objects

    kind, name = args.kind
    name, namespace = _target(args, kind, name)
    output = args.output
    if not output.objects:
        headers, rows = _table_rows(args.api_port, kind, name, namespace)
        if rows or args.watch:
            print(_table(headers, rows), flush=True)
        else:
            print("No resources found.")
        if not args.watch:
            return 0
        seen = {row[0]: change_token(headers, row) for row in rows}
        widths = [len(h) for h in headers]
        for row in rows:
            widths = [max(w, len(str(c))) for w, c in zip(widths, row, strict=True)]
        while True:
            time.sleep(WATCH_INTERVAL_S)
            _, rows = _table_rows(args.api_port, kind, name, namespace, required=False)
            for row in rows:
                token = change_token(headers, row)
                if seen.get(row[0]) != token:
                    seen[row[0]] = token
                    print(_aligned(row, widths), flush=True)
    path = _object_path(kind, name, namespace)
    if name and not args.watch:
        status, reply = _api(args.api_port, "GET", path)
        if status == 404:
            raise CliError(f"{KIND_NAMES[kind]} {namespace}/{name}: not found")
        obj = _check(status, reply)
    else:
        obj = _check(*_api(args.api_port, "GET", path))
    try:
        if not args.watch:
            sys.stdout.write(render_objects(output, obj))
            return 0
        printed: dict[str, str] = {}
        while True:
            for item in obj.get("items", [obj]) if obj.get("kind") == "List" else [obj]:
                text = render_objects(output, item)
                key = json.dumps(item.get("metadata", {}).get("name"))
                if printed.get(key) != text:
                    printed[key] = text
                    sys.stdout.write(text)
                    sys.stdout.flush()
            time.sleep(WATCH_INTERVAL_S)
            status, obj = _api(args.api_port, "GET", path)
            if status == 404:
                obj = {"kind": "List", "items": []}
            else:
                _check(status, obj)
    except OutputError as exc:
        raise CliError(str(exc)) from None


def _aligned(row: Sequence[Any], widths: list[int]) -> str:
    return "   ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()


def cmd_wait(args: argparse.Namespace) -> int:
    from wakegate.serving.objects import full_name

    kind, name = args.target
    name, namespace = _target(args, kind, name)
    if not name:
        raise CliError("target: got no name, expected KIND/NAME such as ksvc/helloworld-go")
    path = _object_path(kind, name, namespace)
    deadline = time.monotonic() + args.timeout
    while True:
        status, reply = _api(args.api_port, "GET", path)
        if status == 404:
            raise CliError(f"{KIND_NAMES[kind]} {namespace}/{name}: not found")
        obj = _check(status, reply)
        if args.condition.met(obj):
            print(f"{full_name(obj)} condition met")
            return 0
        if time.monotonic() >= deadline:
            raise CliError(
                f"timed out after {args.timeout:g} s waiting for condition "
                f"{args.condition.type}={args.condition.status} on {KIND_NAMES[kind]}/{name}",
                code=1,
            )
        time.sleep(min(0.25, max(0.0, deadline - time.monotonic())))


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
    word, _, named = args.pod.partition("/")
    if word.lower() in ("ksvc", "service", "services") and (named or args.name):
        name = named or args.name
        path = f"/v1/services/{args.namespace}/{urllib.parse.quote(name)}/logs"
    elif word.lower() == "pod" and (named or args.name):
        path = f"/v1/pods/{urllib.parse.quote(named or args.name)}/logs"
    elif args.name:
        raise CliError(f"pod: got {args.pod!r} {args.name!r}, expected POD or ksvc NAME")
    else:
        path = f"/v1/pods/{urllib.parse.quote(args.pod)}/logs"
    query = {"tail": str(args.tail), **({"follow": "1"} if args.follow else {})}
    _stream(args.api_port, f"{path}?{urllib.parse.urlencode(query)}")
    return 0


def _proxy_rows(kind: str, items: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    def state(item: dict[str, Any]) -> str:
        gateway = item.get("gateway")
        if gateway is None:
            return "-"
        detail = gateway.get("detail") or ""
        if gateway["state"] in ("served", "stale", "extra"):
            return gateway["state"]
        return f"{gateway['state']}: {detail}" if detail else gateway["state"]

    if kind == "routes":
        return ["ROUTE CONFIG", "VIRTUAL HOST", "DOMAINS", "CLUSTERS", "GATEWAY"], [
            [item["name"], vh["name"], ",".join(vh["domains"]), ",".join(vh["clusters"]) or "-",
             state(item)]
            for item in items
            for vh in item["summary"].get("virtualHosts") or [{"name": "-", "domains": [],
                                                               "clusters": []}]
        ]  # fmt: skip
    if kind == "clusters":
        return ["NAME", "TYPE", "HTTP2", "GATEWAY"], [
            [i["name"], i["summary"].get("type", "-"), i["summary"].get("http2", "-"), state(i)]
            for i in items
        ]
    if kind == "endpoints":
        return ["CLUSTER", "ENDPOINTS", "GATEWAY"], [
            [i["name"], ",".join(i["summary"].get("endpoints", [])) or "-", state(i)] for i in items
        ]
    return ["NAME", "ADDRESS", "ROUTE CONFIGS", "GATEWAY"], [
        [i["name"], i["summary"].get("address", "-"),
         ",".join(i["summary"].get("routeConfigs", [])) or "-", state(i)]
        for i in items
    ]  # fmt: skip


def cmd_proxy_config(args: argparse.Namespace) -> int:
    query = {}
    if args.host:
        query["host"] = args.host
    if args.service:
        query["service"] = f"{args.namespace}/{args.service}"
    path = f"/v1/proxy-config/{args.kind}"
    reply = _check(*_api(args.api_port, "GET", path + "?" + urllib.parse.urlencode(query)))
    if args.output == "json":
        print(json.dumps(reply, indent=2))
    elif args.output == "yaml":
        print(yaml.safe_dump(reply, sort_keys=False), end="")
    elif not reply["items"]:
        print("No resources found.")
    else:
        print(_table(*_proxy_rows(args.kind, reply["items"])))
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
