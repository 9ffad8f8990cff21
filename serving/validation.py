"""Validation and defaulting of a Knative Service given as a plain dict.

Follows Knative's webhook (`service_validation.go`, `revision_validation.go`,
`route_validation.go`, `k8s_validation.go`) and its defaulting (`*_defaults.go`), applied
before the values are stored, so two manifests that mean the same thing give equal
models. Fields outside the modelled subset are rejected rather than silently ignored.
Every error is one `ServiceError` whose message is a single line that names the field
path and what was expected.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from wakegate.ingress.kube_values import HEADER_NAME
from wakegate.serving.autoscaling import (
    AUTOSCALING_PREFIX,
    autoscaling_settings,
    progress_deadline,
)
from wakegate.serving.config import SERVING_CONFIG, ServingConfig
from wakegate.serving.fields import (
    DNS1123_LABEL,
    MAX_NAME,
    QUALIFIED_NAME,
    expect_boolean,
    expect_integer,
    expect_list,
    expect_object,
    expect_string,
    expect_string_map,
    expect_strings,
    fail,
    is_dns1035,
    shown,
)
from wakegate.serving.model import (
    API_VERSION,
    CLUSTER_LOCAL,
    DEFAULT_CONTAINER_NAME,
    DEFAULT_CONTAINER_PORT,
    DEFAULT_PROBE,
    KIND,
    VISIBILITY_LABEL,
    Container,
    ContainerPort,
    EnvVar,
    HTTPGetProbe,
    Probe,
    RevisionTemplate,
    Service,
    StringMap,
    TCPSocketProbe,
    TrafficTarget,
)

_SERVING_PREFIX = "serving.knative.dev/"
_RESERVED_ENV = frozenset({"PORT", "K_SERVICE", "K_CONFIGURATION", "K_REVISION"})
_RESERVED_PORTS = frozenset({8008, 8012, 8013, 8022, 9090, 9091})
_PORT_NAMES = ("", "http1", "h2c")
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")


def _probe_port(value: object, path: str, port: ContainerPort) -> int | str | None:
    if value is None or value == 0:
        return None
    if isinstance(value, bool):
        fail(path, f"got {shown(value)}, expected the container port")
    if isinstance(value, int):
        if value != port.container_port:
            fail(path, f"got {value}, expected the container port {port.container_port}")
        return value
    if isinstance(value, str):
        if value != port.name or not value:
            fail(path, f"got {shown(value)}, expected the container port's name or number")
        return value
    fail(path, f"got {shown(value)}, expected the container port")


def _probe(value: object, path: str, port: ContainerPort) -> Probe:
    if value is None:
        return DEFAULT_PROBE
    obj = expect_object(
        value,
        path,
        (
            "httpGet",
            "tcpSocket",
            "initialDelaySeconds",
            "periodSeconds",
            "timeoutSeconds",
            "successThreshold",
            "failureThreshold",
        ),
    )
    if "httpGet" in obj and "tcpSocket" in obj:
        fail(path, "expected only one of httpGet or tcpSocket")
    http_get = tcp_socket = None
    if "httpGet" in obj:
        where = f"{path}.httpGet"
        get = expect_object(obj["httpGet"], where, ("path", "port", "httpHeaders"))
        probe_path = expect_string(get.get("path") or "/", f"{where}.path")
        if not probe_path.startswith("/"):
            fail(f"{where}.path", f"got {shown(probe_path)}, expected a path starting with '/'")
        headers = []
        raw_headers = get.get("httpHeaders") or []
        for i, header in enumerate(expect_list(raw_headers, f"{where}.httpHeaders")):
            hpath = f"{where}.httpHeaders[{i}]"
            h = expect_object(header, hpath, ("name", "value"))
            name = expect_string(h.get("name"), f"{hpath}.name")
            if not HEADER_NAME.match(name):
                fail(f"{hpath}.name", f"got {shown(name)}, expected an HTTP header name")
            headers.append((name, expect_string(h.get("value", ""), f"{hpath}.value")))
        http_get = HTTPGetProbe(
            path=probe_path,
            port=_probe_port(get.get("port"), f"{where}.port", port),
            http_headers=tuple(headers),
        )
    elif "tcpSocket" in obj:
        where = f"{path}.tcpSocket"
        tcp = expect_object(obj["tcpSocket"] or {}, where, ("port",))
        tcp_socket = TCPSocketProbe(port=_probe_port(tcp.get("port"), f"{where}.port", port))
    else:
        tcp_socket = TCPSocketProbe()

    initial_delay = expect_integer(
        obj.get("initialDelaySeconds", 0), f"{path}.initialDelaySeconds", 0
    )
    period = expect_integer(obj.get("periodSeconds", 0), f"{path}.periodSeconds", 0)
    success = expect_integer(obj.get("successThreshold", 1), f"{path}.successThreshold", 1)
    if period == 0:
        for key in ("timeoutSeconds", "failureThreshold"):
            if obj.get(key):
                fail(f"{path}.{key}", "not allowed when periodSeconds is 0 (aggressive probing)")
        timeout = failure = 0
    else:
        timeout = expect_integer(obj.get("timeoutSeconds", 1), f"{path}.timeoutSeconds", 1)
        failure = expect_integer(obj.get("failureThreshold", 3), f"{path}.failureThreshold", 1)
    return Probe(
        http_get=http_get,
        tcp_socket=tcp_socket,
        initial_delay_s=initial_delay,
        period_s=period,
        timeout_s=timeout,
        success_threshold=success,
        failure_threshold=failure,
    )


def _port(value: object, path: str) -> ContainerPort:
    if value is None or value == []:
        return ContainerPort()
    ports = expect_list(value, path)
    if len(ports) > 1:
        fail(path, f"got {len(ports)} ports, expected exactly one container port")
    where = f"{path}[0]"
    obj = expect_object(ports[0], where, ("name", "containerPort", "protocol"))
    name = expect_string(obj.get("name", ""), f"{where}.name")
    if name not in _PORT_NAMES:
        fail(f"{where}.name", f'got {shown(name)}, expected "http1", "h2c" or no name')
    protocol = expect_string(obj.get("protocol", "TCP"), f"{where}.protocol")
    if protocol != "TCP":
        fail(f"{where}.protocol", f'got {shown(protocol)}, expected "TCP"')
    number = expect_integer(obj.get("containerPort", 0), f"{where}.containerPort", 0, 65535)
    if number in _RESERVED_PORTS:
        fail(f"{where}.containerPort", f"got {number}, a port reserved by Knative; use another")
    return ContainerPort(container_port=number or DEFAULT_CONTAINER_PORT, name=name)


def _env(value: object, path: str) -> tuple[EnvVar, ...]:
    if value is None:
        return ()
    out = []
    for i, item in enumerate(expect_list(value, path)):
        where = f"{path}[{i}]"
        obj = expect_object(item, where, ("name", "value"))
        name = obj.get("name")
        if not name:
            fail(f"{where}.name", "missing required field")
        name = expect_string(name, f"{where}.name")
        if not _ENV_NAME.match(name):
            fail(f"{where}.name", f"got {shown(name)}, expected letters, digits, '_', '-' or '.'")
        if name in _RESERVED_ENV:
            fail(f"{where}.name", f"got {shown(name)}, a reserved environment variable")
        value_text = obj.get("value", "")
        if not isinstance(value_text, str):
            fail(f"{where}.value", f"got {shown(value_text)}, expected a string (quote it in YAML)")
        out.append(EnvVar(name, value_text))
    return tuple(out)


_CONTAINER_FIELDS = (
    "name",
    "image",
    "command",
    "args",
    "env",
    "ports",
    "readinessProbe",
    "workingDir",
)


def _container(value: object, path: str) -> Container:
    obj = expect_object(value, path, _CONTAINER_FIELDS)
    name = expect_string(obj.get("name") or DEFAULT_CONTAINER_NAME, f"{path}.name")
    if len(name) > MAX_NAME or not DNS1123_LABEL.match(name):
        fail(f"{path}.name", f"got {shown(name)}, expected a lowercase DNS label")
    if name == "queue-proxy":
        fail(f"{path}.name", '"queue-proxy" is a reserved container name')
    image = expect_string(obj.get("image") or "", f"{path}.image")
    command = expect_strings(obj.get("command"), f"{path}.command")
    if not image and not command:
        fail(f"{path}.image", "missing required field, expected an image (or a command to run)")
    port = _port(obj.get("ports"), f"{path}.ports")
    return Container(
        name=name,
        image=image,
        command=command,
        args=expect_strings(obj.get("args"), f"{path}.args"),
        env=_env(obj.get("env"), f"{path}.env"),
        port=port,
        readiness_probe=_probe(obj.get("readinessProbe"), f"{path}.readinessProbe", port),
        working_dir=expect_string(obj.get("workingDir") or "", f"{path}.workingDir"),
    )


def parse_template(
    value: object,
    service_name: str,
    path: str = "spec.template",
    config: ServingConfig | None = None,
) -> RevisionTemplate:
    """Validate and default a `spec.template` object of the Service named `service_name`."""
    config = config or SERVING_CONFIG
    if value is None:
        fail(path, "missing required field")
    obj = expect_object(value, path, ("metadata", "spec"))
    meta = expect_object(
        obj.get("metadata") or {},
        f"{path}.metadata",
        ("name", "labels", "annotations", "creationTimestamp"),
    )
    name = expect_string(meta.get("name") or "", f"{path}.metadata.name")
    if name:
        if not is_dns1035(name):
            fail(
                f"{path}.metadata.name",
                f"got {shown(name)}, expected a DNS-1035 label (lowercase letters, digits "
                "and '-', starting with a letter, at most 63 characters)",
            )
        if not name.startswith(f"{service_name}-"):
            fail(
                f"{path}.metadata.name",
                f'got {shown(name)}, expected the prefix "{service_name}-"',
            )
    labels = expect_string_map(meta.get("labels"), f"{path}.metadata.labels", label_values=True)
    annotations = expect_string_map(
        meta.get("annotations"), f"{path}.metadata.annotations", label_values=False
    )
    autoscaling_settings(annotations, f"{path}.metadata.annotations", config)
    progress_deadline(annotations, f"{path}.metadata.annotations")

    spec_path = f"{path}.spec"
    if obj.get("spec") is None:
        fail(spec_path, "missing required field")
    spec = expect_object(
        obj["spec"], spec_path, ("containers", "containerConcurrency", "timeoutSeconds")
    )
    raw = spec.get("containers")
    if raw is None or raw == []:
        fail(f"{spec_path}.containers", "missing required field, expected exactly one container")
    containers = expect_list(raw, f"{spec_path}.containers")
    if len(containers) > 1:
        fail(
            f"{spec_path}.containers",
            f"got {len(containers)} containers, "
            "expected exactly one (multi-container is not supported)",
        )
    container = _container(containers[0], f"{spec_path}.containers[0]")

    cc = spec.get("containerConcurrency")
    concurrency = (
        config.container_concurrency
        if cc is None
        else expect_integer(
            cc,
            f"{spec_path}.containerConcurrency",
            0 if config.allow_container_concurrency_zero else 1,
            config.container_concurrency_max,
        )
    )
    ts = spec.get("timeoutSeconds")
    timeout = (
        0
        if ts is None
        else expect_integer(ts, f"{spec_path}.timeoutSeconds", 0, config.max_revision_timeout_s)
    )
    return RevisionTemplate(
        container=container,
        name=name,
        labels=labels,
        annotations=annotations,
        container_concurrency=concurrency,
        timeout_seconds=timeout or config.revision_timeout_s,
    )


# --- service -------------------------------------------------------------------------

_OBJECT_META_FIELDS = (
    "name",
    "namespace",
    "labels",
    "annotations",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "ownerReferences",
    "finalizers",
    "managedFields",
    "selfLink",
)
"""ObjectMeta keys accepted so `kubectl get -o yaml` output can be applied; only the
first four are kept."""


def _metadata(value: object) -> tuple[str, str, StringMap, StringMap]:
    if value is None:
        fail("metadata", "missing required field")
    meta = expect_object(value, "metadata", _OBJECT_META_FIELDS)
    name = meta.get("name")
    if not name:
        fail("metadata.name", "missing required field")
    name = expect_string(name, "metadata.name")
    if not is_dns1035(name):
        fail(
            "metadata.name",
            f"got {shown(name)}, expected a DNS label (lowercase letters, digits and '-', "
            "starting with a letter, at most 63 characters)",
        )
    namespace = expect_string(meta.get("namespace") or "default", "metadata.namespace")
    if len(namespace) > MAX_NAME or not DNS1123_LABEL.match(namespace):
        fail("metadata.namespace", f"got {shown(namespace)}, expected a lowercase DNS label")
    labels = expect_string_map(meta.get("labels"), "metadata.labels", label_values=True)
    for key, label in labels.items():
        if key == VISIBILITY_LABEL:
            if label != CLUSTER_LOCAL:
                fail(f"metadata.labels[{key}]", f'got {shown(label)}, expected "{CLUSTER_LOCAL}"')
        elif key.startswith(_SERVING_PREFIX):
            fail(f"metadata.labels[{key}]", f"the {_SERVING_PREFIX} label prefix is reserved")
    annotations = expect_string_map(
        meta.get("annotations"), "metadata.annotations", label_values=False
    )
    for key in annotations:
        if key.startswith(AUTOSCALING_PREFIX):
            fail(
                f"metadata.annotations[{key}]",
                "autoscaling annotations belong under spec.template.metadata.annotations",
            )
    return namespace, name, labels, annotations


def _traffic(value: object, service_name: str) -> tuple[TrafficTarget, ...]:
    if value is None or value == []:
        return (TrafficTarget(percent=100, latest_revision=True),)
    targets: list[TrafficTarget] = []
    tags: dict[str, int] = {}
    for i, item in enumerate(expect_list(value, "spec.traffic")):
        where = f"spec.traffic[{i}]"
        obj = expect_object(item, where, ("revisionName", "latestRevision", "percent", "tag"))
        revision = expect_string(obj.get("revisionName") or "", f"{where}.revisionName")
        if revision and (len(revision) > MAX_NAME or not QUALIFIED_NAME.match(revision)):
            fail(f"{where}.revisionName", f"got {shown(revision)}, expected a revision name")
        raw_latest = obj.get("latestRevision")
        latest = (
            not revision
            if raw_latest is None
            else expect_boolean(raw_latest, f"{where}.latestRevision")
        )
        if latest == bool(revision):
            stated = "true" if latest else "false"
            fail(
                f"{where}.latestRevision",
                f"got latestRevision {stated} with revisionName {shown(revision)}, expected "
                "exactly one of revisionName or latestRevision: true",
            )
        percent = expect_integer(obj.get("percent", 0), f"{where}.percent", 0, 100)
        tag = expect_string(obj.get("tag") or "", f"{where}.tag")
        if tag:
            if not is_dns1035(tag):
                fail(
                    f"{where}.tag",
                    f"got {shown(tag)}, expected a DNS-1035 label (lowercase letters, digits "
                    "and '-', starting with a letter)",
                )
            if len(f"{tag}-{service_name}") > MAX_NAME:
                fail(
                    f"{where}.tag",
                    f'got {shown(tag)}, but host label "{tag}-{service_name}" is longer than 63 '
                    "characters",
                )
            if tag in tags:
                fail(
                    f"{where}.tag",
                    f"duplicate tag {shown(tag)}, also in spec.traffic[{tags[tag]}]",
                )
            tags[tag] = i
        targets.append(TrafficTarget(percent, revision, latest, tag))
    total = sum(t.percent for t in targets)
    if total != 100:
        fail("spec.traffic", f"percents sum to {total}, expected 100")
    return tuple(targets)


def parse_service(obj: Mapping[str, Any], config: ServingConfig | None = None) -> Service:
    """Validate and default one Service object (a dict)."""
    if not isinstance(obj, Mapping):
        fail("", f"got {shown(obj)}, expected a Service object")
    if obj.get("apiVersion") != API_VERSION:
        fail("apiVersion", f"got {shown(obj.get('apiVersion'))}, expected {shown(API_VERSION)}")
    if obj.get("kind") != KIND:
        fail("kind", f"got {shown(obj.get('kind'))}, expected {shown(KIND)}")
    obj = expect_object(obj, "", ("apiVersion", "kind", "metadata", "spec", "status"))
    namespace, name, labels, annotations = _metadata(obj.get("metadata"))
    if obj.get("spec") is None:
        fail("spec", "missing required field")
    spec = expect_object(obj["spec"], "spec", ("template", "traffic"))
    template = parse_template(spec.get("template"), name, "spec.template", config)
    return Service(
        namespace=namespace,
        name=name,
        template=template,
        traffic=_traffic(spec.get("traffic"), name),
        labels=labels,
        annotations=annotations,
    )


def require_local_command(service: Service) -> None:
    """Raise unless the container has a `command`: local pods are processes, not images."""
    container = service.template.container
    if not container.command:
        image = f" {shown(container.image)}" if container.image else ""
        fail(
            "spec.template.spec.containers[0].command",
            f"missing; the local runtime runs commands, not images: give the command "
            f"(and args) that start the app instead of only the image{image}",
        )
