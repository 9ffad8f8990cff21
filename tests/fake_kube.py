"""An in-process fake Kubernetes API server, for tests only: no real one runs here.

It speaks the real wire protocol for what wakegate uses, so the official client talks
to it unchanged:

- lists of namespaced and cluster-wide collections with `metadata.resourceVersion`,
  `labelSelector`, `fieldSelector` (`metadata.name`, `metadata.namespace`, `type`) and
  `limit`/`continue` pages over a consistent snapshot;
- watches (`?watch=1&resourceVersion=N&allowWatchBookmarks=true&timeoutSeconds=T`)
  streaming newline-delimited JSON events ADDED / MODIFIED / DELETED / BOOKMARK /
  ERROR, replaying history after N and turning selector transitions into ADDED/DELETED;
- `410 Gone` for an expired resourceVersion: an ERROR event with code 410 (as the
  real server answers a watch) or, with `gone_as_http`, an HTTP 410;
- GET/POST/PUT/PATCH/DELETE of objects, the `status` subresource (PUT and merge
  PATCH), optimistic concurrency (a stale `metadata.resourceVersion` → 409 Conflict,
  creating an existing name → 409 AlreadyExists);
- `managedFields` on every write, naming its manager as the real server does: the
  `fieldManager` query parameter, else the User-Agent up to its first `/`;
- a restart (`restart`): every watch stream breaks mid-stream and the history is gone,
  and each resource comes back on its own schedule (`restore`), answering 503 until
  then; any resource's watches can also be dropped (`drop`) and restored on their own,
  so that tests choose the order in which informers re-list;
- injected failures (`fail`) for retry tests, and a log of every request (method,
  path, query, User-Agent, field manager).

Tests change objects server-side with `apply`/`delete`, as other controllers would.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

Obj = dict[str, Any]


@dataclass(frozen=True)
class Kind:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    status_subresource: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


KINDS: tuple[Kind, ...] = (
    Kind("networking.internal.knative.dev", "v1alpha1", "ingresses", "Ingress"),
    Kind("networking.internal.knative.dev", "v1alpha1", "serverlessservices", "ServerlessService"),
    Kind("", "v1", "services", "Service"),
    Kind("", "v1", "secrets", "Secret", status_subresource=False),
    Kind("", "v1", "endpoints", "Endpoints", status_subresource=False),
    Kind("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice", status_subresource=False),
    Kind("coordination.k8s.io", "v1", "leases", "Lease", status_subresource=False),
)
_BY_PATH = {(k.group, k.version, k.plural): k for k in KINDS}
_BY_KIND = {(k.api_version, k.kind): k for k in KINDS}


class _Error(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message


def status_object(code: int, reason: str, message: str) -> Obj:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    body: Any
    at: float
    """time.monotonic() when the request arrived."""
    user_agent: str = ""
    status: int = 0

    @property
    def field_manager(self) -> str:
        """The manager the real server records for this request's writes."""
        return manager_of(self.query, self.user_agent)

    @property
    def authorization(self) -> tuple[str, str, str]:
        """What RBAC checks for this request: (apiGroup, resource[/subresource], verb)."""
        parts = [p for p in self.path.split("/") if p]
        if parts[:1] == ["api"]:
            group, rest = "", parts[2:]
        else:
            group, rest = parts[1], parts[3:]
        if rest[:1] == ["namespaces"] and len(rest) >= 3:
            rest = rest[2:]
        resource = "/".join(rest[0:1] + rest[2:3])
        named = len(rest) >= 2
        verbs = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
        if self.method == "GET":
            watching = self.query.get("watch") in ("1", "true", "True")
            verb = "get" if named else "watch" if watching else "list"
        else:
            verb = verbs[self.method]
        return group, resource, verb


def manager_of(query: Mapping[str, str], user_agent: str) -> str:
    """`fieldManager`, else the User-Agent's first part (apiserver's prefixFromUserAgent)."""
    return query.get("fieldManager") or user_agent.split("/", 1)[0][:128]


_DROP = object()
"""A watch queue item that breaks the stream without its last chunk, as a crash does."""


class _Dropped(Exception):
    pass


@dataclass
class _Failure:
    remaining: int
    status: int
    method: str | None
    path_contains: str | None
    watch: bool | None

    def matches(self, method: str, path: str, watching: bool) -> bool:
        return (
            (self.method is None or self.method == method)
            and (self.path_contains is None or self.path_contains in path)
            and (self.watch is None or self.watch == watching)
        )


@dataclass
class _Event:
    rv: int
    kind: Kind
    type: str
    obj: Obj
    old: Obj | None


@dataclass(eq=False)
class _Watcher:
    kind: Kind
    namespace: str | None
    labels: list[tuple[str, str, str]]
    fields: list[tuple[str, str, str]]
    queue: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)

    def offer(self, event: _Event) -> None:
        if event.kind != self.kind:
            return
        now = self.visible(event.obj) if event.type != "DELETED" else False
        before = event.old is not None and self.visible(event.old)
        if event.type == "DELETED":
            before = self.visible(event.obj)
        if now and before:
            kind = "MODIFIED"
        elif now:
            kind = "ADDED"
        elif before:
            kind = "DELETED"
        else:
            return
        self.queue.put_nowait({"type": kind, "object": copy.deepcopy(event.obj)})

    def visible(self, obj: Obj) -> bool:
        meta = obj["metadata"]
        if self.namespace is not None and meta.get("namespace") != self.namespace:
            return False
        return _match_labels(meta.get("labels") or {}, self.labels) and _match_fields(
            obj, self.fields
        )


def _parse_selector(text: str | None) -> list[tuple[str, str, str]]:
    """`a=b,c!=d,e,!f` → [(key, op, value)]; ops `=`, `!=`, `exists`, `!exists`."""
    terms: list[tuple[str, str, str]] = []
    for raw in (text or "").split(","):
        term = raw.strip()
        if not term:
            continue
        if "!=" in term:
            key, value = term.split("!=", 1)
            terms.append((key.strip(), "!=", value.strip()))
        elif "=" in term:
            key, value = term.split("=", 1)
            terms.append((key.strip(), "=", value.strip().lstrip("=")))
        elif term.startswith("!"):
            terms.append((term[1:], "!exists", ""))
        else:
            terms.append((term, "exists", ""))
    return terms


def _match_labels(labels: Mapping[str, str], terms: Iterable[tuple[str, str, str]]) -> bool:
    for key, op, value in terms:
        present = key in labels
        if op == "=" and labels.get(key) != value:
            return False
        if op == "!=" and labels.get(key) == value:
            return False
        if op == "exists" and not present:
            return False
        if op == "!exists" and present:
            return False
    return True


def _field_value(obj: Obj, name: str) -> str:
    value: Any = obj
    for part in name.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return "" if value is None else str(value)


def _match_fields(obj: Obj, terms: Iterable[tuple[str, str, str]]) -> bool:
    for key, op, value in terms:
        actual = _field_value(obj, key)
        if (op == "=" and actual != value) or (op == "!=" and actual == value):
            return False
    return True


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def _utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class FakeKube:
    """The fake API server. `async with FakeKube() as kube:` → `kube.url`."""

    def __init__(self, *, bookmark_interval_s: float = 0.5, gone_as_http: bool = False) -> None:
        self.bookmark_interval_s = bookmark_interval_s
        self.gone_as_http = gone_as_http
        self.requests: list[Request] = []
        self._objects: dict[Kind, dict[tuple[str, str], Obj]] = {k: {} for k in KINDS}
        self._rv = 100
        self._history: list[_Event] = []
        self._compacted = 0
        self._watchers: set[_Watcher] = set()
        self._failures: list[_Failure] = []
        self._pages: dict[str, list[Obj]] = {}
        self._tokens = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._down: set[str] = set()
        """Plurals of the resources that answer 503 to lists and watches."""
        self.port = 0
        self.on_request: Callable[[Request], None] | None = None
        """Called as each request arrives, before it is answered."""

    # --- lifecycle --------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> str:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None and server.sockets  # type: ignore[union-attr]
        self.port = int(server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        return self.url

    async def stop(self) -> None:
        for watcher in list(self._watchers):
            watcher.queue.put_nowait(None)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeKube:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def kubeconfig(self, path: Path) -> Path:
        """Write a kubeconfig pointing at this server; returns its path."""
        path.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
                    "users": [{"name": "fake", "user": {"token": "fake-token"}}],
                    "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
                    "current-context": "fake",
                }
            )
        )
        return path

    # --- server-side changes, as other controllers would make them ----------------------

    @property
    def resource_version(self) -> int:
        return self._rv

    def apply(self, obj: Obj) -> Obj:
        """Create `obj`, or replace the object of that name (spec and status); the stored copy."""
        kind = self._kind_of(obj)
        meta = obj.get("metadata") or {}
        namespace = meta.get("namespace", "default") if kind.namespaced else ""
        current = self._objects[kind].get((namespace, meta["name"]))
        body = copy.deepcopy(obj)
        body.setdefault("metadata", {})["namespace"] = namespace
        if current is None:
            return self._create(kind, namespace, body)
        body["metadata"].pop("resourceVersion", None)
        return self._replace(kind, namespace, meta["name"], body, keep_status=False)

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> bool:
        k = _BY_KIND[(api_version, kind)]
        try:
            self._delete(k, namespace if k.namespaced else "", name)
        except _Error:
            return False
        return True

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> Obj | None:
        k = _BY_KIND[(api_version, kind)]
        found = self._objects[k].get((namespace if k.namespaced else "", name))
        return copy.deepcopy(found) if found is not None else None

    def compact(self) -> None:
        """Forget the event history: a watch resuming from an older version gets 410."""
        self._compacted = self._rv
        self._history.clear()

    def expire_watches(self) -> int:
        """Compact, then end every open watch with an ERROR 410 event; how many ended."""
        self.compact()
        gone = status_object(410, "Expired", "too old resource version")
        count = 0
        for watcher in list(self._watchers):
            watcher.queue.put_nowait({"type": "ERROR", "object": gone})
            watcher.queue.put_nowait(None)
            count += 1
        return count

    def drop(self, *plurals: str) -> None:
        """Break the open watch streams of these resources (all when none is named) mid-
        stream, and answer 503 to their lists and watches until `restore`."""
        names = set(plurals) or {k.plural for k in KINDS}
        self._down |= names
        for watcher in list(self._watchers):
            if watcher.kind.plural in names:
                watcher.queue.put_nowait(_DROP)

    def restore(self, *plurals: str) -> None:
        """Serve these resources again (all when none is named)."""
        if plurals:
            self._down -= set(plurals)
        else:
            self._down.clear()

    def restart(self) -> None:
        """As the API server restarting: every watch breaks, the history is gone (a
        watch from an older version gets 410), every resource is down until restored."""
        self._next_rv()
        self.compact()
        self.drop()

    @property
    def down(self) -> frozenset[str]:
        return frozenset(self._down)

    def close_watches(self) -> int:
        """End every open watch cleanly (as a server-side timeout does)."""
        for watcher in list(self._watchers):
            watcher.queue.put_nowait(None)
        return len(self._watchers)

    def fail(
        self,
        count: int,
        *,
        status: int = 500,
        method: str | None = None,
        path_contains: str | None = None,
        watch: bool | None = None,
    ) -> None:
        """Answer the next `count` matching requests with `status` (a Status object)."""
        self._failures.append(_Failure(count, status, method, path_contains, watch))

    def clear_failures(self) -> None:
        self._failures.clear()

    def requests_to(self, method: str, path_contains: str) -> list[Request]:
        return [r for r in self.requests if r.method == method and path_contains in r.path]

    # --- storage ----------------------------------------------------------------------

    def _kind_of(self, obj: Obj) -> Kind:
        try:
            return _BY_KIND[(obj["apiVersion"], obj["kind"])]
        except KeyError:
            raise _Error(
                400, "BadRequest", f"unknown kind {obj.get('apiVersion')}/{obj.get('kind')}"
            ) from None

    def _next_rv(self) -> int:
        self._rv += 1
        return self._rv

    def _record(self, kind: Kind, type_: str, obj: Obj, old: Obj | None) -> None:
        event = _Event(int(obj["metadata"]["resourceVersion"]), kind, type_, obj, old)
        self._history.append(event)
        for watcher in list(self._watchers):
            watcher.offer(event)

    def _manage(self, obj: Obj, manager: str | None, subresource: str = "") -> None:
        """Record `manager`'s write in `managedFields`, one entry per manager, operation
        and subresource, as the real server keeps them."""
        if not manager:
            return
        meta = obj["metadata"]
        entry = {
            "manager": manager,
            "operation": "Update",
            "apiVersion": obj.get("apiVersion", ""),
            "time": _utc_now(),
            "fieldsType": "FieldsV1",
            "fieldsV1": {},
        }
        if subresource:
            entry["subresource"] = subresource
        same = (manager, "Update", subresource)
        kept = [
            e
            for e in meta.get("managedFields") or []
            if (e.get("manager"), e.get("operation"), e.get("subresource", "")) != same
        ]
        meta["managedFields"] = [*kept, entry]

    def _create(self, kind: Kind, namespace: str, body: Obj, manager: str | None = None) -> Obj:
        meta = body.setdefault("metadata", {})
        name = meta.get("name")
        if not name:
            raise _Error(422, "Invalid", "metadata.name: Required value")
        if (namespace, name) in self._objects[kind]:
            raise _Error(409, "AlreadyExists", f'{kind.plural} "{name}" already exists')
        body["apiVersion"], body["kind"] = kind.api_version, kind.kind
        if kind.namespaced:
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = _utc_now()
        meta["generation"] = 1
        meta["resourceVersion"] = str(self._next_rv())
        self._manage(body, manager)
        self._objects[kind][(namespace, name)] = body
        self._record(kind, "ADDED", copy.deepcopy(body), None)
        return copy.deepcopy(body)

    def _current(self, kind: Kind, namespace: str, name: str) -> Obj:
        current = self._objects[kind].get((namespace, name))
        if current is None:
            raise _Error(
                404, "NotFound", f'{kind.plural}.{kind.group or "core"} "{name}" not found'
            )
        return current

    def _replace(
        self,
        kind: Kind,
        namespace: str,
        name: str,
        body: Obj,
        *,
        keep_status: bool,
        manager: str | None = None,
    ) -> Obj:
        current = self._current(kind, namespace, name)
        wanted = (body.get("metadata") or {}).get("resourceVersion")
        if wanted and wanted != current["metadata"]["resourceVersion"]:
            raise _Error(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {kind.plural} "{name}": the object has '
                "been modified; please apply your changes to the latest version and try again",
            )
        new = copy.deepcopy(body)
        new["apiVersion"], new["kind"] = kind.api_version, kind.kind
        meta = new.setdefault("metadata", {})
        old_meta = current["metadata"]
        for key in ("name", "namespace", "uid", "creationTimestamp"):
            if key in old_meta:
                meta[key] = old_meta[key]
        if keep_status and kind.status_subresource:
            if "status" in current:
                new["status"] = copy.deepcopy(current["status"])
            else:
                new.pop("status", None)
        changed = {k: v for k, v in new.items() if k not in ("metadata", "status")} != {
            k: v for k, v in current.items() if k not in ("metadata", "status")
        }
        meta["generation"] = old_meta.get("generation", 1) + (1 if changed else 0)
        meta["managedFields"] = copy.deepcopy(old_meta.get("managedFields") or [])
        self._manage(new, manager)
        return self._store(kind, namespace, name, new, current)

    def _store(self, kind: Kind, namespace: str, name: str, new: Obj, old: Obj) -> Obj:
        new["metadata"]["resourceVersion"] = str(self._next_rv())
        self._objects[kind][(namespace, name)] = new
        self._record(kind, "MODIFIED", copy.deepcopy(new), copy.deepcopy(old))
        return copy.deepcopy(new)

    def _replace_status(
        self, kind: Kind, namespace: str, name: str, body: Obj, manager: str | None = None
    ) -> Obj:
        current = self._current(kind, namespace, name)
        wanted = (body.get("metadata") or {}).get("resourceVersion")
        if wanted and wanted != current["metadata"]["resourceVersion"]:
            raise _Error(409, "Conflict", f'the object {kind.plural} "{name}" has been modified')
        new = copy.deepcopy(current)
        if "status" in body:
            new["status"] = copy.deepcopy(body["status"])
        else:
            new.pop("status", None)
        self._manage(new, manager, "status")
        return self._store(kind, namespace, name, new, current)

    def _patch(
        self,
        kind: Kind,
        namespace: str,
        name: str,
        patch: Obj,
        *,
        status: bool,
        manager: str | None = None,
    ) -> Obj:
        current = self._current(kind, namespace, name)
        wanted = (patch.get("metadata") or {}).get("resourceVersion")
        if wanted and wanted != current["metadata"]["resourceVersion"]:
            raise _Error(409, "Conflict", f'the object {kind.plural} "{name}" has been modified')
        merged = merge_patch(current, patch)
        if status:
            new = copy.deepcopy(current)
            if "status" in merged:
                new["status"] = merged["status"]
            self._manage(new, manager, "status")
            return self._store(kind, namespace, name, new, current)
        merged["metadata"].pop("resourceVersion", None)
        return self._replace(kind, namespace, name, merged, keep_status=True, manager=manager)

    def _delete(self, kind: Kind, namespace: str, name: str) -> Obj:
        current = self._current(kind, namespace, name)
        del self._objects[kind][(namespace, name)]
        gone = copy.deepcopy(current)
        gone["metadata"]["resourceVersion"] = str(self._next_rv())
        self._record(kind, "DELETED", gone, None)
        return copy.deepcopy(gone)

    # --- HTTP -------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        query = dict(request.query)
        body: Any = None
        if request.can_read_body:
            text = await request.text()
            try:
                body = json.loads(text) if text else None
            except ValueError:
                return _status_response(400, "BadRequest", "request body is not JSON")
        watching = query.get("watch") in ("1", "true", "True")
        record = Request(
            request.method,
            request.path,
            query,
            body,
            time.monotonic(),
            request.headers.get("User-Agent", ""),
        )
        self.requests.append(record)
        if self.on_request is not None:
            self.on_request(record)
        for failure in self._failures:
            if failure.remaining > 0 and failure.matches(request.method, request.path, watching):
                failure.remaining -= 1
                record.status = failure.status
                return _status_response(failure.status, "InternalError", "injected failure")
        try:
            response = await self._route(request, query, body, watching, record.field_manager)
        except _Error as err:
            record.status = err.code
            return _status_response(err.code, err.reason, err.message)
        record.status = response.status
        return response

    def _parse_path(self, path: str) -> tuple[Kind, str | None, str | None, str | None]:
        parts = [p for p in path.split("/") if p]
        if parts[:2] == ["api", "v1"]:
            group, version, rest = "", "v1", parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 3:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise _Error(
                404, "NotFound", f"the server could not find the requested resource {path}"
            )
        namespace = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        if not rest:
            raise _Error(404, "NotFound", f"no resource in {path}")
        kind = _BY_PATH.get((group, version, rest[0]))
        if kind is None:
            raise _Error(
                404, "NotFound", f"the server could not find the requested resource {path}"
            )
        name = rest[1] if len(rest) >= 2 else None
        sub = rest[2] if len(rest) >= 3 else None
        if sub is not None and (sub != "status" or not kind.status_subresource):
            raise _Error(404, "NotFound", f"no subresource {sub} of {kind.plural}")
        if namespace is not None and not kind.namespaced:
            raise _Error(404, "NotFound", f"{kind.plural} are not namespaced")
        return kind, namespace, name, sub

    async def _route(
        self,
        request: web.Request,
        query: dict[str, str],
        body: Any,
        watching: bool,
        manager: str,
    ) -> web.StreamResponse:
        kind, namespace, name, sub = self._parse_path(request.path)
        ns = namespace or ""
        method = request.method
        if method == "GET" and name is None and kind.plural in self._down:
            raise _Error(503, "ServiceUnavailable", f"{kind.plural} are not served yet")
        if name is None:
            if method == "GET" and watching:
                return await self._watch(request, kind, namespace, query)
            if method == "GET":
                return web.json_response(self._list(kind, namespace, query))
            if method == "POST":
                if not isinstance(body, dict):
                    raise _Error(400, "BadRequest", "expected an object")
                body_ns = (body.get("metadata") or {}).get("namespace")
                if body_ns and namespace and body_ns != namespace:
                    raise _Error(400, "BadRequest", "the namespace of the object does not match")
                if kind != self._kind_of(body):
                    raise _Error(400, "BadRequest", "kind does not match the collection")
                created = self._create(kind, ns, copy.deepcopy(body), manager)
                return web.json_response(created, status=201)
            raise _Error(405, "MethodNotAllowed", f"{method} is not allowed on a collection")
        if method == "GET":
            return web.json_response(copy.deepcopy(self._current(kind, ns, name)))
        if method == "DELETE":
            return web.json_response(self._delete(kind, ns, name))
        if not isinstance(body, dict):
            raise _Error(400, "BadRequest", "expected an object")
        if method == "PUT":
            if (body.get("metadata") or {}).get("name") not in (None, name):
                raise _Error(400, "BadRequest", "the name of the object does not match the URL")
            if sub == "status":
                return web.json_response(self._replace_status(kind, ns, name, body, manager))
            return web.json_response(
                self._replace(kind, ns, name, body, keep_status=True, manager=manager)
            )
        if method == "PATCH":
            content_type = request.headers.get("Content-Type", "")
            if "merge-patch" not in content_type:
                raise _Error(
                    415, "UnsupportedMediaType", f"the fake takes merge patches, got {content_type}"
                )
            return web.json_response(
                self._patch(kind, ns, name, body, status=sub == "status", manager=manager)
            )
        raise _Error(405, "MethodNotAllowed", f"{method} is not allowed")

    def _list(self, kind: Kind, namespace: str | None, query: dict[str, str]) -> Obj:
        token = query.get("continue")
        if token:
            if token not in self._pages:
                raise _Error(410, "Expired", "the provided continue parameter is too old")
            items, rv = self._pages.pop(token), token.split("-", 1)[0]
        else:
            labels = _parse_selector(query.get("labelSelector"))
            fields = _parse_selector(query.get("fieldSelector"))
            items = [
                copy.deepcopy(obj)
                for (ns, _), obj in sorted(self._objects[kind].items())
                if (namespace is None or ns == namespace)
                and _match_labels(obj["metadata"].get("labels") or {}, labels)
                and _match_fields(obj, fields)
            ]
            rv = str(self._rv)
        meta: Obj = {"resourceVersion": rv}
        limit = int(query.get("limit") or 0)
        if limit and len(items) > limit:
            next_token = f"{rv}-{next(self._tokens)}"
            self._pages[next_token] = items[limit:]
            items = items[:limit]
            meta["continue"] = next_token
        return {
            "kind": f"{kind.kind}List",
            "apiVersion": kind.api_version,
            "metadata": meta,
            "items": items,
        }

    async def _watch(
        self, request: web.Request, kind: Kind, namespace: str | None, query: dict[str, str]
    ) -> web.StreamResponse:
        watcher = _Watcher(
            kind,
            namespace,
            _parse_selector(query.get("labelSelector")),
            _parse_selector(query.get("fieldSelector")),
        )
        since_text = query.get("resourceVersion") or "0"
        since = int(since_text)
        if since and since < self._compacted:
            if self.gone_as_http:
                raise _Error(410, "Expired", f"too old resource version: {since} ({self._rv})")
            watcher.queue.put_nowait(
                {
                    "type": "ERROR",
                    "object": status_object(
                        410, "Expired", f"too old resource version: {since} ({self._rv})"
                    ),
                }
            )
            watcher.queue.put_nowait(None)
        elif since == 0:
            for obj in self._list(kind, namespace, query)["items"]:
                if watcher.visible(obj):
                    watcher.queue.put_nowait({"type": "ADDED", "object": obj})
            self._watchers.add(watcher)
        else:
            for event in self._history:
                if event.rv > since:
                    watcher.offer(event)
            self._watchers.add(watcher)
        bookmarks = query.get("allowWatchBookmarks") in ("1", "true", "True")
        timeout = float(query.get("timeoutSeconds") or 0) or None
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        try:
            await self._stream(response, watcher, kind, bookmarks, timeout)
            await response.write_eof()
        except ConnectionResetError:
            pass
        except _Dropped:
            if request.transport is not None:
                request.transport.abort()
        finally:
            self._watchers.discard(watcher)
        return response

    async def _stream(
        self,
        response: web.StreamResponse,
        watcher: _Watcher,
        kind: Kind,
        bookmarks: bool,
        timeout: float | None,
    ) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout if timeout else None
        next_bookmark = loop.time() + self.bookmark_interval_s
        while True:
            now = loop.time()
            wait = next_bookmark - now if bookmarks else None
            if deadline is not None:
                wait = min(wait, deadline - now) if wait is not None else deadline - now
            try:
                async with asyncio.timeout(max(wait, 0) if wait is not None else None):
                    event = await watcher.queue.get()
            except TimeoutError:
                if deadline is not None and loop.time() >= deadline:
                    return
                next_bookmark = loop.time() + self.bookmark_interval_s
                event = {
                    "type": "BOOKMARK",
                    "object": {
                        "kind": kind.kind,
                        "apiVersion": kind.api_version,
                        "metadata": {"resourceVersion": str(self._rv)},
                    },
                }
            if event is None:
                return
            if event is _DROP:
                raise _Dropped
            await response.write(json.dumps(event).encode() + b"\n")


def _status_response(code: int, reason: str, message: str) -> web.Response:
    return web.json_response(status_object(code, reason, message), status=code)
