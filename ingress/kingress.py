"""Parse and validate Knative `networking.internal.knative.dev/v1alpha1` Ingress objects.

The input is a plain dict as loaded from YAML or JSON; the output is the frozen rule
model of `wakegate.ingress.model`. Validation follows Knative's webhook
(`ingress_validation.go`, `ingress_defaults.go`) and is stricter where the gateway
would otherwise silently misroute: unknown fields, hosts that are not DNS names and
paths that do not start with `/` are rejected. Every error is one `IngressError`
whose message is a single line naming the field path.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, NoReturn, TypeVar

import yaml

from wakegate.ingress.documents import load_all
from wakegate.ingress.kube_values import DNS_LABEL, DNS_SUBDOMAIN, HEADER_NAME, parse_go_duration
from wakegate.ingress.model import (
    TLS,
    BackendRef,
    Headers,
    HTTPOption,
    Ingress,
    Path,
    Retry,
    Rule,
    Split,
    Visibility,
)

API_VERSION = "networking.internal.knative.dev/v1alpha1"
KIND = "Ingress"


class IngressError(ValueError):
    """A KIngress that cannot be turned into routing rules; the message is one line."""


_OBJECT_META_FIELDS = frozenset(
    {
        "name",
        "generateName",
        "namespace",
        "selfLink",
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "labels",
        "annotations",
        "ownerReferences",
        "finalizers",
        "managedFields",
    }
)
_PORT_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")


def _fail(path: str, message: str) -> NoReturn:
    raise IngressError(f"{path}: {message}" if path else message)


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__


def _object(value: object, path: str, allowed: frozenset[str]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        _fail(path, f"expected an object, got {_type_name(value)}")
    for key in value:
        if key not in allowed:
            where = f"{path}.{key}" if path else str(key)
            _fail(where, f"unknown field, expected one of {', '.join(sorted(allowed))}")
    return value


def _list(value: object, path: str) -> list[Any]:
    if not isinstance(value, list):
        _fail(path, f"expected a list, got {_type_name(value)}")
    return value


def _string(value: object, path: str) -> str:
    if not isinstance(value, str):
        _fail(path, f"expected a string, got {_type_name(value)}")
    return value


def _required_string(obj: Mapping[str, Any], key: str, path: str) -> str:
    value = obj.get(key)
    if value is None or value == "":
        _fail(f"{path}.{key}", "missing required field")
    return _string(value, f"{path}.{key}")


def _integer(value: object, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(path, f"expected an integer, got {_type_name(value)}")
    return value


def _headers_to_set(value: object, path: str) -> Headers:
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        _fail(path, f"expected an object of header names to values, got {_type_name(value)}")
    items = []
    for name, header_value in value.items():
        _header_name(name, f"{path}.{name}")
        if name.lower() == "host":
            _fail(f"{path}.{name}", "the Host header cannot be set, use rewriteHost")
        items.append((name, _string(header_value, f"{path}.{name}")))
    return tuple(sorted(items))


def _header_name(name: object, path: str) -> str:
    if not isinstance(name, str) or not HEADER_NAME.match(name):
        _fail(path, "invalid header name, expected an HTTP token")
    return name


def parse_duration(value: object, path: str) -> float:
    """Seconds from a Kubernetes duration such as `30s`, `1m30s` or `250ms`."""
    seconds = parse_go_duration(_string(value, path).strip())
    if seconds is None:
        _fail(path, f"invalid duration {value!r}, expected e.g. 30s, 1m30s or 250ms")
    if seconds < 0:
        _fail(path, f"duration {value!r} is negative, expected at least 0s")
    return seconds


def _host(value: object, path: str) -> str:
    host = _string(value, path).strip().lower()
    bare = host[2:] if host.startswith("*.") else host
    if not bare or len(host) > 253 or not DNS_SUBDOMAIN.match(bare):
        _fail(path, f"invalid host {value!r}, expected a DNS name such as app.example.com")
    return host


def _hosts(value: object, path: str, *, required: bool) -> tuple[str, ...]:
    if value is None or value == []:
        if required:
            _fail(path, "missing required field, expected at least one host")
        return ()
    hosts = [_host(h, f"{path}[{i}]") for i, h in enumerate(_list(value, path))]
    return tuple(dict.fromkeys(hosts))


def _service_port(value: object, path: str) -> int | str:
    if value is None or value == "" or value == 0:
        _fail(path, "missing required field")
    if isinstance(value, bool):
        _fail(path, "expected a port number 1..65535 or a port name, got boolean")
    if isinstance(value, int):
        if not 1 <= value <= 65535:
            _fail(path, f"port {value} is out of range, expected 1..65535 or a port name")
        return value
    if isinstance(value, str):
        if (
            len(value) <= 15
            and _PORT_NAME.match(value)
            and "--" not in value
            and any(c.isalpha() for c in value)
        ):
            return value
        _fail(path, f"invalid port {value!r}, expected a port number 1..65535 or a port name")
    _fail(path, f"expected a port number 1..65535 or a port name, got {_type_name(value)}")


_SPLIT_FIELDS = frozenset(
    {"serviceNamespace", "serviceName", "servicePort", "percent", "appendHeaders"}
)


def _split(value: object, path: str, namespace: str) -> Split:
    obj = _object(value, path, _SPLIT_FIELDS)
    if not obj:
        _fail(path, "missing required field, expected serviceNamespace, serviceName, servicePort")
    service_namespace = _required_string(obj, "serviceNamespace", path)
    if service_namespace != namespace:
        _fail(
            f"{path}.serviceNamespace",
            f"service namespace {service_namespace!r} must match the ingress namespace "
            f"{namespace!r}",
        )
    name = _required_string(obj, "serviceName", path)
    port = _service_port(obj.get("servicePort"), f"{path}.servicePort")
    percent = _integer(obj.get("percent", 0), f"{path}.percent")
    if not 0 <= percent <= 100:
        _fail(f"{path}.percent", f"percent {percent} is out of range, expected 0..100")
    return Split(
        backend=BackendRef(namespace=service_namespace, name=name, port=port),
        percent=percent,
        append_headers=_headers_to_set(obj.get("appendHeaders"), f"{path}.appendHeaders"),
    )


def _splits(value: object, path: str, namespace: str) -> tuple[Split, ...]:
    if value is None or value == []:
        _fail(path, "missing required field, expected at least one split")
    splits = [_split(s, f"{path}[{i}]", namespace) for i, s in enumerate(_list(value, path))]
    if len(splits) == 1 and splits[0].percent == 0:
        return (Split(splits[0].backend, 100, splits[0].append_headers),)
    total = sum(s.percent for s in splits)
    if total != 100:
        _fail(path, f"percents sum to {total}, expected 100")
    return tuple(splits)


def _header_matches(value: object, path: str) -> Headers:
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        _fail(path, f"expected an object of header names to matches, got {_type_name(value)}")
    matches = []
    for name, match in value.items():
        where = f"{path}.{name}"
        _header_name(name, where)
        obj = _object(match, where, frozenset({"exact"}))
        if "exact" not in obj:
            _fail(f"{where}.exact", "missing required field, only exact matches are supported")
        matches.append((name, _string(obj["exact"], f"{where}.exact")))
    return tuple(sorted(matches))


def _retry(value: object, path: str) -> Retry | None:
    if value is None:
        return None
    obj = _object(value, path, frozenset({"attempts", "perTryTimeout"}))
    attempts = _integer(obj.get("attempts", 0), f"{path}.attempts")
    if attempts < 0:
        _fail(f"{path}.attempts", f"attempts {attempts} is negative, expected at least 0")
    per_try = obj.get("perTryTimeout")
    per_try_s = None if per_try is None else parse_duration(per_try, f"{path}.perTryTimeout")
    if per_try_s is not None and per_try_s < 0.001:
        _fail(f"{path}.perTryTimeout", "expected at least 1ms")
    return Retry(attempts=attempts, per_try_timeout_s=per_try_s)


_PATH_FIELDS = frozenset(
    {"path", "rewriteHost", "headers", "splits", "appendHeaders", "timeout", "retries"}
)


def _path(value: object, path: str, namespace: str) -> Path:
    obj = _object(value, path, _PATH_FIELDS)
    if not obj:
        _fail(path, "missing required field, expected splits")
    prefix = _string(obj.get("path") or "", f"{path}.path")
    if prefix and not prefix.startswith("/"):
        _fail(f"{path}.path", f"path {prefix!r} must start with '/'")
    splits = _splits(obj.get("splits"), f"{path}.splits", namespace)
    rewrite_host = ""
    if obj.get("rewriteHost"):
        rewrite_host = _host(obj["rewriteHost"], f"{path}.rewriteHost")
        if len(splits) > 1:
            _fail(f"{path}.rewriteHost", f"rewriteHost needs exactly one split, got {len(splits)}")
    timeout = obj.get("timeout")
    return Path(
        splits=splits,
        path=prefix,
        headers=_header_matches(obj.get("headers"), f"{path}.headers"),
        rewrite_host=rewrite_host,
        append_headers=_headers_to_set(obj.get("appendHeaders"), f"{path}.appendHeaders"),
        timeout_s=None if timeout is None else parse_duration(timeout, f"{path}.timeout"),
        retry=_retry(obj.get("retries"), f"{path}.retries"),
    )


_E = TypeVar("_E", Visibility, HTTPOption)


def _enum(value: object, path: str, enum: type[_E], default: _E) -> _E:
    if value is None or value == "":
        return default
    for member in enum:
        if value == member.value:
            return member
    expected = " or ".join(m.value for m in enum)
    _fail(path, f"unknown value {value!r}, expected {expected}")


def _rule(value: object, path: str, namespace: str) -> Rule:
    obj = _object(value, path, frozenset({"hosts", "visibility", "http"}))
    if not obj:
        _fail(path, "missing required field, expected hosts and http")
    hosts = _hosts(obj.get("hosts"), f"{path}.hosts", required=True)
    visibility = _enum(
        obj.get("visibility"), f"{path}.visibility", Visibility, Visibility.EXTERNAL_IP
    )
    if obj.get("http") is None:
        _fail(f"{path}.http", "missing required field")
    http = _object(obj["http"], f"{path}.http", frozenset({"paths"}))
    paths_path = f"{path}.http.paths"
    raw_paths = http.get("paths")
    if raw_paths is None or raw_paths == []:
        _fail(paths_path, "missing required field, expected at least one path")
    paths = tuple(
        _path(p, f"{paths_path}[{i}]", namespace)
        for i, p in enumerate(_list(raw_paths, paths_path))
    )
    return Rule(hosts=hosts, paths=paths, visibility=visibility)


_TLS_FIELDS = frozenset(
    {"hosts", "secretName", "secretNamespace", "serverCertificate", "privateKey"}
)


def _tls(value: object, path: str) -> TLS:
    obj = _object(value, path, _TLS_FIELDS)
    if not obj:
        _fail(path, "missing required field, expected secretName and secretNamespace")
    return TLS(
        hosts=_hosts(obj.get("hosts"), f"{path}.hosts", required=False),
        secret_name=_required_string(obj, "secretName", path),
        secret_namespace=_required_string(obj, "secretNamespace", path),
    )


def _metadata(value: object) -> tuple[str, str, int]:
    if value is None:
        _fail("metadata", "missing required field")
    meta = _object(value, "metadata", _OBJECT_META_FIELDS)
    name = _required_string(meta, "name", "metadata")
    if len(name) > 253 or not DNS_SUBDOMAIN.match(name):
        _fail("metadata.name", f"invalid name {name!r}, expected a lowercase DNS subdomain")
    namespace = _string(meta.get("namespace") or "default", "metadata.namespace")
    if len(namespace) > 63 or not DNS_LABEL.match(namespace):
        _fail("metadata.namespace", f"invalid namespace {namespace!r}, expected a DNS label")
    generation = _integer(meta.get("generation", 0), "metadata.generation")
    return namespace, name, generation


def _check_type(obj: Mapping[str, Any]) -> None:
    if obj.get("apiVersion") != API_VERSION:
        _fail("apiVersion", f"got {obj.get('apiVersion')!r}, expected {API_VERSION!r}")
    if obj.get("kind") != KIND:
        _fail("kind", f"got {obj.get('kind')!r}, expected {KIND!r}")


def parse_ingress(obj: Mapping[str, Any]) -> Ingress:
    """Validate one KIngress object (a dict) and return it as the rule model."""
    obj = _object(obj, "", frozenset({"apiVersion", "kind", "metadata", "spec", "status"}))
    _check_type(obj)
    namespace, name, generation = _metadata(obj.get("metadata"))
    if not obj.get("spec"):
        _fail("spec", "missing required field")
    spec = _object(obj["spec"], "spec", frozenset({"rules", "tls", "httpOption", "generation"}))
    raw_rules = spec.get("rules")
    if raw_rules is None or raw_rules == []:
        _fail("spec.rules", "missing required field, expected at least one rule")
    rules = tuple(
        _rule(r, f"spec.rules[{i}]", namespace)
        for i, r in enumerate(_list(raw_rules, "spec.rules"))
    )
    raw_tls = spec.get("tls") or []
    tls = tuple(_tls(t, f"spec.tls[{i}]") for i, t in enumerate(_list(raw_tls, "spec.tls")))
    option = _enum(spec.get("httpOption"), "spec.httpOption", HTTPOption, HTTPOption.ENABLED)
    return Ingress(
        namespace=namespace,
        name=name,
        rules=rules,
        tls=tls,
        http_option=option,
        generation=generation,
    )


def _parse_document(document: object) -> list[Ingress]:
    if isinstance(document, Mapping) and document.get("kind") == "List":
        ingresses = []
        for index, item in enumerate(_list(document.get("items") or [], "items")):
            try:
                ingresses.append(parse_ingress(item))
            except IngressError as err:
                raise IngressError(f"items[{index}]: {err}") from None
        return ingresses
    return [parse_ingress(document)]  # type: ignore[arg-type]


def load_ingresses(text: str) -> list[Ingress]:
    """Parse every KIngress in a multi-document YAML (or JSON) text.

    Empty documents are skipped; a `kind: List` document contributes its `items`.
    Errors name the zero-based document index.
    """
    documents: list[object] = []
    try:
        for document in load_all(text):
            documents.append(document)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or "invalid YAML"
        raise IngressError(f"document {len(documents)}: malformed YAML{where}: {problem}") from None
    ingresses: list[Ingress] = []
    for index, document in enumerate(documents):
        if document is None:
            continue
        try:
            ingresses += _parse_document(document)
        except IngressError as err:
            raise IngressError(f"document {index}: {err}") from None
    return ingresses
