"""KIngress parsing and validation (networking.internal.knative.dev/v1alpha1)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from wakegate.ingress.kingress import IngressError, load_ingresses, parse_duration, parse_ingress
from wakegate.ingress.model import (
    TLS,
    BackendRef,
    HTTPOption,
    Ingress,
    Path,
    Retry,
    Rule,
    Split,
    Visibility,
)

FULL = """
apiVersion: networking.internal.knative.dev/v1alpha1
kind: Ingress
metadata:
  name: hello
  namespace: default
  generation: 4
  labels: {serving.knative.dev/route: hello}
  annotations: {networking.knative.dev/ingress.class: wakegate.ingress.networking.knative.dev}
spec:
  httpOption: Redirected
  tls:
  - hosts: [hello.default.example.com]
    secretName: route-tls
    secretNamespace: default
  rules:
  - hosts: [Hello.Default.Example.com, hello-tag.default.example.com]
    visibility: ExternalIP
    http:
      paths:
      - path: /api
        headers:
          Knative-Serving-Tag: {exact: canary}
        rewriteHost: hello.default.svc.cluster.local
        appendHeaders: {Knative-Serving-Tag: canary, K-Original-Host: hello.default.example.com}
        timeout: 1m30s
        retries: {attempts: 2, perTryTimeout: 250ms}
        splits:
        - serviceNamespace: default
          serviceName: hello-00002
          servicePort: 80
          appendHeaders:
            Knative-Serving-Revision: hello-00002
            Knative-Serving-Namespace: default
      - splits:
        - {serviceNamespace: default, serviceName: hello-00001, servicePort: http2, percent: 70}
        - {serviceNamespace: default, serviceName: hello-00002, servicePort: 80, percent: 30}
  - hosts: [hello.default.svc.cluster.local]
    visibility: ClusterLocal
    http:
      paths:
      - splits: [{serviceNamespace: default, serviceName: hello-00001, servicePort: 8080}]
status:
  observedGeneration: 3
"""


def full() -> dict[str, Any]:
    return yaml.safe_load(FULL)


def test_every_field_is_parsed() -> None:
    ingress = parse_ingress(full())
    assert ingress == Ingress(
        namespace="default",
        name="hello",
        generation=4,
        http_option=HTTPOption.REDIRECTED,
        tls=(TLS(("hello.default.example.com",), "default", "route-tls"),),
        rules=(
            Rule(
                hosts=("hello.default.example.com", "hello-tag.default.example.com"),
                visibility=Visibility.EXTERNAL_IP,
                paths=(
                    Path(
                        path="/api",
                        headers=(("Knative-Serving-Tag", "canary"),),
                        rewrite_host="hello.default.svc.cluster.local",
                        append_headers=(
                            ("K-Original-Host", "hello.default.example.com"),
                            ("Knative-Serving-Tag", "canary"),
                        ),
                        timeout_s=90.0,
                        retry=Retry(attempts=2, per_try_timeout_s=0.25),
                        splits=(
                            Split(
                                BackendRef("default", "hello-00002", 80),
                                100,
                                (
                                    ("Knative-Serving-Namespace", "default"),
                                    ("Knative-Serving-Revision", "hello-00002"),
                                ),
                            ),
                        ),
                    ),
                    Path(
                        splits=(
                            Split(BackendRef("default", "hello-00001", "http2"), 70),
                            Split(BackendRef("default", "hello-00002", 80), 30),
                        )
                    ),
                ),
            ),
            Rule(
                hosts=("hello.default.svc.cluster.local",),
                visibility=Visibility.CLUSTER_LOCAL,
                paths=(Path(splits=(Split(BackendRef("default", "hello-00001", 8080), 100),)),),
            ),
        ),
    )
    assert hash(ingress) == hash(parse_ingress(full()))


def test_defaults() -> None:
    obj = {
        "apiVersion": "networking.internal.knative.dev/v1alpha1",
        "kind": "Ingress",
        "metadata": {"name": "min"},
        "spec": {
            "rules": [
                {
                    "hosts": ["min.default.example.com"],
                    "http": {
                        "paths": [
                            {
                                "splits": [
                                    {
                                        "serviceNamespace": "default",
                                        "serviceName": "min",
                                        "servicePort": 80,
                                    }
                                ]
                            }
                        ]
                    },
                }
            ]
        },
    }
    ingress = parse_ingress(obj)
    assert ingress.namespace == "default"
    assert ingress.http_option is HTTPOption.ENABLED
    assert ingress.tls == ()
    rule = ingress.rules[0]
    assert rule.visibility is Visibility.EXTERNAL_IP
    path = rule.paths[0]
    assert (path.path, path.timeout_s, path.retry, path.rewrite_host) == ("", None, None, "")
    assert path.splits[0].percent == 100


def test_splits_with_a_zero_percent_entry_are_kept() -> None:
    obj = full()
    obj["spec"]["rules"][0]["http"]["paths"][1]["splits"].append(
        {"serviceNamespace": "default", "serviceName": "old", "servicePort": 80, "percent": 0}
    )
    splits = parse_ingress(obj).rules[0].paths[1].splits
    assert [s.percent for s in splits] == [70, 30, 0]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30.0), ("1m30s", 90.0), ("250ms", 0.25), ("1h", 3600.0), ("1.5s", 1.5), ("0", 0.0)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text, "x") == pytest.approx(seconds)


def _set(obj: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """Set (or, for the value DELETE, remove) a dotted path such as spec.rules.0.hosts."""
    keys = [int(k) if k.isdigit() else k for k in path.split(".")]
    target: Any = obj
    for key in keys[:-1]:
        target = target[key]
    if value is DELETE:
        del target[keys[-1]]
    else:
        target[keys[-1]] = value
    return obj


DELETE = object()
SPLIT0 = "spec.rules.0.http.paths.1.splits.0"
BAD: list[tuple[str, Any, str]] = [
    ("spec.rules.0.hosts", DELETE, "spec.rules[0].hosts: missing required field"),
    ("spec.rules.0.hosts", [], "spec.rules[0].hosts: missing required field"),
    ("spec.rules.0.hosts", ["not a host"], "spec.rules[0].hosts[0]: invalid host"),
    (
        f"{SPLIT0}.percent",
        60,
        "spec.rules[0].http.paths[1].splits: percents sum to 90, expected 100",
    ),
    (f"{SPLIT0}.percent", 101, "spec.rules[0].http.paths[1].splits[0].percent: percent 101"),
    (f"{SPLIT0}.servicePort", -1, "spec.rules[0].http.paths[1].splits[0].servicePort: port -1"),
    (f"{SPLIT0}.servicePort", 70000, "splits[0].servicePort: port 70000 is out of range"),
    (f"{SPLIT0}.servicePort", "8080", "splits[0].servicePort: invalid port '8080'"),
    (f"{SPLIT0}.servicePort", DELETE, "splits[0].servicePort: missing required field"),
    (f"{SPLIT0}.serviceName", DELETE, "splits[0].serviceName: missing required field"),
    (f"{SPLIT0}.serviceNamespace", "other", "splits[0].serviceNamespace: service namespace"),
    ("spec.rules.0.visibility", "Public", "spec.rules[0].visibility: unknown value 'Public'"),
    ("spec.httpOption", "Always", "spec.httpOption: unknown value 'Always'"),
    ("spec.rules.0.http.paths.0.splits", DELETE, "spec.rules[0].http.paths[0].splits: missing"),
    ("spec.rules.0.http.paths.0.splits", [], "spec.rules[0].http.paths[0].splits: missing"),
    ("spec.rules.0.http.paths", [], "spec.rules[0].http.paths: missing required field"),
    ("spec.rules.0.http", DELETE, "spec.rules[0].http: missing required field"),
    ("spec.rules", [], "spec.rules: missing required field"),
    ("spec.rules.0", {}, "spec.rules[0]: missing required field"),
    ("spec.rules.0.http.paths.0", {}, "spec.rules[0].http.paths[0]: missing required field"),
    ("spec.rules.0.http.paths.0.path", "api", "spec.rules[0].http.paths[0].path: path 'api'"),
    ("spec.rules.0.http.paths.0.timeout", "soon", "spec.rules[0].http.paths[0].timeout: invalid"),
    ("spec.rules.0.http.paths.0.retries.attempts", -1, "paths[0].retries.attempts: attempts -1"),
    ("spec.rules.0.http.paths.0.headers.X-Tag", {"prefix": "a"}, "headers.X-Tag.prefix: unknown"),
    ("spec.rules.0.http.paths.0.appendHeaders.X-Num", 7, "appendHeaders.X-Num: expected a string"),
    ("spec.rules.0.http.paths.0.appendHeaders.host", "x", "appendHeaders.host: the Host header"),
    ("spec.rules.0.http.paths.0.weight", 5, "spec.rules[0].http.paths[0].weight: unknown field"),
    ("spec.rules.0.host", "a.example.com", "spec.rules[0].host: unknown field"),
    ("spec.extra", True, "spec.extra: unknown field"),
    ("metadata.name", DELETE, "metadata.name: missing required field"),
    ("metadata.namespace", "Not_A_Label", "metadata.namespace: invalid namespace"),
    ("spec.tls.0.secretName", DELETE, "spec.tls[0].secretName: missing required field"),
    ("spec.tls.0", {}, "spec.tls[0]: missing required field"),
    ("apiVersion", "networking.k8s.io/v1", "apiVersion: got 'networking.k8s.io/v1', expected"),
    ("kind", "Service", "kind: got 'Service', expected 'Ingress'"),
]


@pytest.mark.parametrize(("where", "value", "message"), BAD, ids=[b[2][:60] for b in BAD])
def test_bad_input_names_the_field(where: str, value: Any, message: str) -> None:
    obj = _set(full(), where, value)
    with pytest.raises(IngressError) as caught:
        parse_ingress(obj)
    text = str(caught.value)
    assert message in text
    assert "\n" not in text


def test_rewrite_host_needs_a_single_split() -> None:
    obj = full()
    path = obj["spec"]["rules"][0]["http"]["paths"][0]
    path["splits"] = copy.deepcopy(obj["spec"]["rules"][0]["http"]["paths"][1]["splits"])
    with pytest.raises(IngressError, match=r"^spec\.rules\[0\]\.http\.paths\[0\]\.rewriteHost: "):
        parse_ingress(obj)


def test_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="expected an object"):
        parse_ingress([])  # type: ignore[arg-type]


def test_load_ingresses_reads_every_document() -> None:
    text = FULL + "---\n" + FULL.replace("name: hello\n", "name: other\n") + "---\n"
    ingresses = load_ingresses(text)
    assert [i.key for i in ingresses] == ["default/hello", "default/other"]


def test_load_ingresses_reads_a_list() -> None:
    text = yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": [full(), full()]})
    assert len(load_ingresses(text)) == 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("spec: [1, 2\n", "document 0: malformed YAML at line 2"),
        (FULL + "---\na: [\n", "document 1: malformed YAML"),
        (FULL + "---\nkind: Service\n", "document 1: apiVersion: got None"),
        (FULL + "---\n- a\n", "document 1: expected an object, got list"),
        (
            FULL.replace("percent: 30", "percent: 20"),
            "document 0: spec.rules[0].http.paths[1].splits: percents sum to 90, expected 100",
        ),
        (
            yaml.safe_dump({"kind": "List", "items": [{"kind": "Ingress"}]}),
            "document 0: items[0]: apiVersion: got None",
        ),
    ],
)
def test_load_ingresses_errors_name_the_document(text: str, message: str) -> None:
    with pytest.raises(IngressError) as caught:
        load_ingresses(text)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)
