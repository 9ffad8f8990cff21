"""Knative Service validation and defaulting: every rule names its field path."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from wakegate.ingress.kube_values import parse_go_duration
from wakegate.serving.autoscaling import autoscaling_settings
from wakegate.serving.config import ServingConfig, admitted
from wakegate.serving.fields import ServiceError
from wakegate.serving.manifests import load_services, service_to_dict
from wakegate.serving.model import DEFAULT_PROBE, TrafficTarget
from wakegate.serving.validation import parse_service, require_local_command

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "helloworld" / "helloworld-go.yaml"
ANN = "spec.template.metadata.annotations"
CONTAINER = "spec.template.spec.containers[0]"


def manifest() -> dict[str, Any]:
    return {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {"name": "hello", "namespace": "demo"},
        "spec": {
            "template": {
                "metadata": {"annotations": {}},
                "spec": {"containers": [{"image": "hello:1", "command": ["python3", "app.py"]}]},
            }
        },
    }


Mutation = Callable[[dict[str, Any]], None]


def annotate(key: str, value: Any) -> Mutation:
    def apply(m: dict[str, Any]) -> None:
        m["spec"]["template"]["metadata"]["annotations"][key] = value

    return apply


def container(**fields: Any) -> Mutation:
    def apply(m: dict[str, Any]) -> None:
        m["spec"]["template"]["spec"]["containers"][0].update(fields)

    return apply


def template_spec(**fields: Any) -> Mutation:
    def apply(m: dict[str, Any]) -> None:
        m["spec"]["template"]["spec"].update(fields)

    return apply


def traffic(*targets: dict[str, Any]) -> Mutation:
    def apply(m: dict[str, Any]) -> None:
        m["spec"]["traffic"] = list(targets)

    return apply


def metadata(**fields: Any) -> Mutation:
    def apply(m: dict[str, Any]) -> None:
        m["metadata"].update(fields)

    return apply


def setter(*path: str, value: Any) -> Mutation:
    def apply(m: dict[str, Any]) -> None:
        node = m
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return apply


def both(*mutations: Mutation) -> Mutation:
    def apply(m: dict[str, Any]) -> None:
        for mutation in mutations:
            mutation(m)

    return apply


INVALID: list[tuple[str, Mutation, str, str]] = [
    # (case, mutation, field path the message starts with, fragment of the message)
    ("wrong apiVersion", setter("apiVersion", value="v1"), "apiVersion", "serving.knative.dev/v1"),
    ("wrong kind", setter("kind", value="Route"), "kind", '"Service"'),
    ("uppercase name", metadata(name="Hello"), "metadata.name", "DNS label"),
    ("name with underscore", metadata(name="hello_world"), "metadata.name", '"hello_world"'),
    ("name too long", metadata(name="a" * 64), "metadata.name", "63"),
    ("name starts with digit", metadata(name="1hello"), "metadata.name", "starting with a letter"),
    ("missing name", metadata(name=None), "metadata.name", "missing required field"),
    ("bad namespace", metadata(namespace="Demo"), "metadata.namespace", "DNS label"),
    ("unknown metadata field", metadata(generateName="x-"), "metadata.generateName", "unknown"),
    ("unknown top-level field", setter("extra", value=1), "extra", "unknown field"),
    ("unknown spec field", setter("spec", "rollout", value={}), "spec.rollout", "unknown field"),
    (
        "unknown container field",
        container(resources={"limits": {"cpu": "1"}}),
        f"{CONTAINER}.resources",
        "expected one of args, command",
    ),
    (
        "unknown template spec field",
        template_spec(serviceAccountName="x"),
        "spec.template.spec.serviceAccountName",
        "unknown field",
    ),
    (
        "unknown template metadata field",
        setter("spec", "template", "metadata", "generateName", value="x"),
        "spec.template.metadata.generateName",
        "unknown field",
    ),
    (
        "unknown traffic field",
        traffic({"latestRevision": True, "percent": 100, "configurationName": "x"}),
        "spec.traffic[0].configurationName",
        "unknown field",
    ),
    (
        "unknown env field",
        container(env=[{"name": "A", "valueFrom": {}}]),
        f"{CONTAINER}.env[0].valueFrom",
        "unknown field",
    ),
    (
        "unknown probe handler",
        container(readinessProbe={"exec": {"command": ["true"]}}),
        f"{CONTAINER}.readinessProbe.exec",
        "unknown field",
    ),
    (
        'target "abc"',
        annotate("autoscaling.knative.dev/target", "abc"),
        f"{ANN}[autoscaling.knative.dev/target]",
        "invalid value: abc, expected a number >= 0.01",
    ),
    (
        "target below minimum",
        annotate("autoscaling.knative.dev/target", "0.001"),
        f"{ANN}[autoscaling.knative.dev/target]",
        "target 0.001 should be at least 0.01",
    ),
    (
        "target nan",
        annotate("autoscaling.knative.dev/target", "nan"),
        f"{ANN}[autoscaling.knative.dev/target]",
        "number",
    ),
    (
        "target as YAML number",
        annotate("autoscaling.knative.dev/target", 10),
        f"{ANN}[autoscaling.knative.dev/target]",
        "expected a string",
    ),
    (
        'window "1s"',
        annotate("autoscaling.knative.dev/window", "1s"),
        f"{ANN}[autoscaling.knative.dev/window]",
        "expected 6s <= 1s <= 1h0m0s",
    ),
    (
        "window over an hour",
        annotate("autoscaling.knative.dev/window", "61m"),
        f"{ANN}[autoscaling.knative.dev/window]",
        "expected 6s <= 61m <= 1h0m0s",
    ),
    (
        "window not whole seconds",
        annotate("autoscaling.knative.dev/window", "6500ms"),
        f"{ANN}[autoscaling.knative.dev/window]",
        "must be specified with at most second precision",
    ),
    (
        "window not a duration",
        annotate("autoscaling.knative.dev/window", "60"),
        f"{ANN}[autoscaling.knative.dev/window]",
        "invalid value: 60, expected a duration",
    ),
    (
        "utilization 0",
        annotate("autoscaling.knative.dev/target-utilization-percentage", "0"),
        f"{ANN}[autoscaling.knative.dev/target-utilization-percentage]",
        "expected 1 <= 0 <= 100",
    ),
    (
        "utilization over 100",
        annotate("autoscaling.knative.dev/target-utilization-percentage", "101"),
        f"{ANN}[autoscaling.knative.dev/target-utilization-percentage]",
        "expected 1 <= 101 <= 100",
    ),
    (
        "panic window below 1",
        annotate("autoscaling.knative.dev/panic-window-percentage", "0.5"),
        f"{ANN}[autoscaling.knative.dev/panic-window-percentage]",
        "expected 1 <= 0.5 <= 100",
    ),
    (
        "panic threshold below 110",
        annotate("autoscaling.knative.dev/panic-threshold-percentage", "100"),
        f"{ANN}[autoscaling.knative.dev/panic-threshold-percentage]",
        "expected 110 <= 100 <= 1000",
    ),
    (
        "panic threshold over 1000",
        annotate("autoscaling.knative.dev/panic-threshold-percentage", "1001"),
        f"{ANN}[autoscaling.knative.dev/panic-threshold-percentage]",
        "expected 110 <= 1001 <= 1000",
    ),
    (
        "negative min-scale",
        annotate("autoscaling.knative.dev/min-scale", "-1"),
        f"{ANN}[autoscaling.knative.dev/min-scale]",
        "expected 0 <= -1 <= 2147483647",
    ),
    (
        "fractional max-scale",
        annotate("autoscaling.knative.dev/max-scale", "2.5"),
        f"{ANN}[autoscaling.knative.dev/max-scale]",
        "invalid value: 2.5",
    ),
    (
        "min-scale > max-scale",
        both(
            annotate("autoscaling.knative.dev/min-scale", "3"),
            annotate("autoscaling.knative.dev/max-scale", "2"),
        ),
        f"{ANN}[autoscaling.knative.dev/max-scale]",
        "max-scale=2 is less than min-scale=3",
    ),
    (
        "initial-scale 0",
        annotate("autoscaling.knative.dev/initial-scale", "0"),
        f"{ANN}[autoscaling.knative.dev/initial-scale]",
        "initial-scale=0 not allowed by cluster",
    ),
    (
        "initial-scale 00 is zero too",
        annotate("autoscaling.knative.dev/initial-scale", "00"),
        f"{ANN}[autoscaling.knative.dev/initial-scale]",
        "allow-zero-initial-scale",
    ),
    (
        "initialScale 0 (old spelling)",
        annotate("autoscaling.knative.dev/initialScale", "0"),
        f"{ANN}[autoscaling.knative.dev/initialScale]",
        "invalid value: 0, initial-scale=0 not allowed by cluster",
    ),
    (
        "burst capacity -2",
        annotate("autoscaling.knative.dev/target-burst-capacity", "-2"),
        f"{ANN}[autoscaling.knative.dev/target-burst-capacity]",
        "-1 for unlimited",
    ),
    (
        "hpa class",
        annotate("autoscaling.knative.dev/class", "hpa.autoscaling.knative.dev"),
        f"{ANN}[autoscaling.knative.dev/class]",
        "kpa.autoscaling.knative.dev",
    ),
    (
        "cpu metric",
        annotate("autoscaling.knative.dev/metric", "cpu"),
        f"{ANN}[autoscaling.knative.dev/metric]",
        "invalid value: cpu, expected concurrency or rps",
    ),
    (
        "unknown autoscaling annotation",
        annotate("autoscaling.knative.dev/scale-up-delay", "10s"),
        f"{ANN}[autoscaling.knative.dev/scale-up-delay]",
        "unknown autoscaling annotation",
    ),
    (
        "legacy and current key together",
        both(
            annotate("autoscaling.knative.dev/min-scale", "1"),
            annotate("autoscaling.knative.dev/minScale", "1"),
        ),
        f"{ANN}[autoscaling.knative.dev/minScale]",
        "conflicts with autoscaling.knative.dev/min-scale",
    ),
    (
        "autoscaling annotation on the Service",
        metadata(annotations={"autoscaling.knative.dev/target": "10"}),
        "metadata.annotations[autoscaling.knative.dev/target]",
        "spec.template.metadata.annotations",
    ),
    (
        "invalid annotation key",
        annotate("bad key", "x"),
        f"{ANN}[bad key]",
        "invalid key",
    ),
    (
        "visibility label value",
        metadata(labels={"networking.knative.dev/visibility": "internal"}),
        "metadata.labels[networking.knative.dev/visibility]",
        '"cluster-local"',
    ),
    (
        "reserved serving label",
        metadata(labels={"serving.knative.dev/route": "x"}),
        "metadata.labels[serving.knative.dev/route]",
        "reserved",
    ),
    (
        "percents sum to 90",
        traffic(
            {"revisionName": "hello-00001", "percent": 40},
            {"latestRevision": True, "percent": 50},
        ),
        "spec.traffic",
        "percents sum to 90, expected 100",
    ),
    (
        "both revisionName and latestRevision",
        traffic({"revisionName": "hello-00001", "latestRevision": True, "percent": 100}),
        "spec.traffic[0].latestRevision",
        "exactly one of revisionName or latestRevision",
    ),
    (
        "neither revisionName nor latestRevision",
        traffic({"latestRevision": False, "percent": 100}),
        "spec.traffic[0].latestRevision",
        "exactly one of revisionName or latestRevision",
    ),
    (
        "percent over 100",
        traffic({"latestRevision": True, "percent": 101}),
        "spec.traffic[0].percent",
        "0..100",
    ),
    (
        "percent as string",
        traffic({"latestRevision": True, "percent": "100"}),
        "spec.traffic[0].percent",
        "expected an integer",
    ),
    (
        "duplicate tags",
        traffic(
            {"latestRevision": True, "percent": 50, "tag": "blue"},
            {"revisionName": "hello-00001", "percent": 50, "tag": "blue"},
        ),
        "spec.traffic[1].tag",
        'duplicate tag "blue", also in spec.traffic[0]',
    ),
    (
        "tag not DNS-safe",
        traffic({"latestRevision": True, "percent": 100, "tag": "Blue_1"}),
        "spec.traffic[0].tag",
        "DNS-1035 label",
    ),
    (
        "tag host label too long",
        traffic({"latestRevision": True, "percent": 100, "tag": "t" * 58}),
        "spec.traffic[0].tag",
        "longer than 63",
    ),
    (
        "negative containerConcurrency",
        template_spec(containerConcurrency=-1),
        "spec.template.spec.containerConcurrency",
        "got -1, expected 0..1000",
    ),
    (
        "containerConcurrency over 1000",
        template_spec(containerConcurrency=1001),
        "spec.template.spec.containerConcurrency",
        "0..1000",
    ),
    (
        "timeoutSeconds over the maximum",
        template_spec(timeoutSeconds=601),
        "spec.template.spec.timeoutSeconds",
        "0..600",
    ),
    (
        "two containers",
        template_spec(containers=[{"image": "a"}, {"image": "b"}]),
        "spec.template.spec.containers",
        "expected exactly one",
    ),
    (
        "no containers",
        template_spec(containers=[]),
        "spec.template.spec.containers",
        "missing required field",
    ),
    ("missing template", setter("spec", "template", value=None), "spec.template", "missing"),
    (
        "neither image nor command",
        container(image=None, command=None),
        f"{CONTAINER}.image",
        "missing required field",
    ),
    (
        "queue-proxy container name",
        container(name="queue-proxy"),
        f"{CONTAINER}.name",
        "reserved",
    ),
    (
        "command not a list",
        container(command="python3 app.py"),
        f"{CONTAINER}.command",
        "expected a list",
    ),
    (
        "reserved env var",
        container(env=[{"name": "PORT", "value": "1"}]),
        f"{CONTAINER}.env[0].name",
        "reserved",
    ),
    (
        "env value not a string",
        container(env=[{"name": "N", "value": 3}]),
        f"{CONTAINER}.env[0].value",
        "expected a string",
    ),
    (
        "port name not allowed",
        container(ports=[{"name": "http", "containerPort": 8080}]),
        f"{CONTAINER}.ports[0].name",
        '"h2c"',
    ),
    (
        "reserved port",
        container(ports=[{"containerPort": 8012}]),
        f"{CONTAINER}.ports[0].containerPort",
        "reserved",
    ),
    (
        "two ports",
        container(ports=[{"containerPort": 8080}, {"containerPort": 8081}]),
        f"{CONTAINER}.ports",
        "exactly one container port",
    ),
    (
        "probe with two handlers",
        container(readinessProbe={"httpGet": {"path": "/"}, "tcpSocket": {}}),
        f"{CONTAINER}.readinessProbe",
        "only one of httpGet or tcpSocket",
    ),
    (
        "probe on another port",
        container(
            ports=[{"containerPort": 8080}],
            readinessProbe={"httpGet": {"path": "/", "port": 9000}},
        ),
        f"{CONTAINER}.readinessProbe.httpGet.port",
        "container port 8080",
    ),
    (
        "probe timeout with aggressive probing",
        container(readinessProbe={"tcpSocket": {}, "timeoutSeconds": 2}),
        f"{CONTAINER}.readinessProbe.timeoutSeconds",
        "periodSeconds is 0",
    ),
    (
        "template name without the service prefix",
        setter("spec", "template", "metadata", "name", value="other-v1"),
        "spec.template.metadata.name",
        'prefix "hello-"',
    ),
    (
        "template name not DNS-1035",
        setter("spec", "template", "metadata", "name", value="hello-V1"),
        "spec.template.metadata.name",
        "DNS-1035",
    ),
]


@pytest.mark.parametrize(
    ("mutation", "path", "fragment"),
    [case[1:] for case in INVALID],
    ids=[case[0] for case in INVALID],
)
def test_invalid_service_names_the_field(mutation: Mutation, path: str, fragment: str) -> None:
    doc = manifest()
    mutation(doc)
    with pytest.raises(ServiceError) as caught:
        parse_service(doc)
    message = str(caught.value)
    assert message.startswith(f"{path}: "), message
    assert fragment in message
    assert "\n" not in message


def test_every_case_starts_from_a_valid_manifest() -> None:
    service = parse_service(manifest())
    assert service.key == "demo/hello"


def test_malformed_yaml_names_the_document() -> None:
    text = EXAMPLE.read_text() + "---\nmetadata: {name: [unclosed\n"
    with pytest.raises(ServiceError) as caught:
        load_services(text)
    assert str(caught.value).startswith("document 1: malformed YAML at line")


def test_wrong_kind_names_the_document() -> None:
    text = EXAMPLE.read_text() + "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n"
    with pytest.raises(ServiceError) as caught:
        load_services(text)
    assert str(caught.value) == (
        'document 1: apiVersion: got "v1", expected "serving.knative.dev/v1"'
    )


def test_a_service_given_twice_is_an_error() -> None:
    text = EXAMPLE.read_text() + "---\n" + EXAMPLE.read_text()
    with pytest.raises(ServiceError, match=r"^document 1: metadata.name: .*document 0"):
        load_services(text)


def test_list_documents_and_empty_documents() -> None:
    second = manifest()
    second["metadata"]["name"] = "other"
    text = "---\n" + yaml.safe_dump({"kind": "List", "items": [manifest(), second]}) + "---\n"
    assert [s.name for s in load_services(text)] == ["hello", "other"]
    with pytest.raises(ServiceError, match=r"^document 0: items\[1\]: metadata.name"):
        second["metadata"]["name"] = "Bad"
        load_services(yaml.safe_dump({"kind": "List", "items": [manifest(), second]}))


def test_image_without_command_is_a_local_runtime_error() -> None:
    doc = manifest()
    del doc["spec"]["template"]["spec"]["containers"][0]["command"]
    service = parse_service(doc)  # valid Knative: cluster mode runs the image
    with pytest.raises(ServiceError) as caught:
        require_local_command(service)
    message = str(caught.value)
    assert message.startswith(f"{CONTAINER}.command: ")
    assert "runs commands, not images" in message
    assert '"hello:1"' in message
    require_local_command(parse_service(manifest()))


def test_helloworld_example_parses_with_knative_defaults() -> None:
    (service,) = load_services(EXAMPLE.read_text())
    assert (service.namespace, service.name) == ("default", "helloworld-go")
    template = service.template
    assert template.annotations["autoscaling.knative.dev/target"] == "10"
    assert dict(template.labels) == {"app": "helloworld-go"}
    assert template.timeout_seconds == 300
    assert template.container_concurrency == 0
    c = template.container
    assert c.name == "user-container"
    assert c.command == ("python3", "app.py")
    assert c.image.endswith("helloworld-go:160e4dc8")
    assert (c.port.name, c.port.container_port) == ("http1", 8080)
    assert [(e.name, e.value) for e in c.env] == [("TARGET", "World")]
    assert c.readiness_probe == DEFAULT_PROBE
    assert service.traffic == (TrafficTarget(percent=100, latest_revision=True),)
    assert not service.cluster_local


def test_defaults_and_explicit_values_that_mean_the_same_are_equal() -> None:
    explicit = manifest()
    explicit["metadata"]["namespace"] = "demo"
    explicit["spec"]["traffic"] = [{"latestRevision": True, "percent": 100}]
    explicit["spec"]["template"]["spec"].update(timeoutSeconds=300, containerConcurrency=0)
    explicit["spec"]["template"]["spec"]["containers"][0].update(
        name="user-container", readinessProbe={"tcpSocket": {}}
    )
    assert parse_service(explicit) == parse_service(manifest())


def test_round_trip_through_service_to_dict() -> None:
    doc = manifest()
    annotate("autoscaling.knative.dev/window", "2m")(doc)
    container(
        ports=[{"name": "h2c", "containerPort": 9000}],
        readinessProbe={
            "httpGet": {"path": "/ready", "httpHeaders": [{"name": "X-A", "value": "1"}]},
            "periodSeconds": 2,
        },
        env=[{"name": "B", "value": "2"}, {"name": "A", "value": "1"}],
        workingDir="/srv",
    )(doc)
    traffic(
        {"revisionName": "hello-00001", "percent": 30, "tag": "old"},
        {"latestRevision": True, "percent": 70},
    )(doc)
    service = parse_service(doc)
    assert parse_service(service_to_dict(service)) == service
    probe = service.template.container.readiness_probe
    assert (probe.period_s, probe.timeout_s, probe.failure_threshold) == (2, 1, 3)
    assert service.template.container.port.http2


def test_valid_autoscaling_annotations() -> None:
    settings = autoscaling_settings(
        {
            "autoscaling.knative.dev/class": "kpa.autoscaling.knative.dev",
            "autoscaling.knative.dev/target": "0.5",
            "autoscaling.knative.dev/window": "1m30s",
            "autoscaling.knative.dev/minScale": "2",
            "autoscaling.knative.dev/max-scale": "0",
            "autoscaling.knative.dev/target-burst-capacity": "-1",
            "other.example.com/anything": "kept",
        }
    )
    assert settings == {
        "class": "kpa.autoscaling.knative.dev",
        "target": 0.5,
        "window": 90.0,
        "min-scale": 2,
        "max-scale": 0,
        "target-burst-capacity": -1.0,
    }


def test_zero_initial_scale_allowed_by_config() -> None:
    doc = manifest()
    annotate("autoscaling.knative.dev/initial-scale", "0")(doc)
    service = parse_service(doc, ServingConfig(allow_zero_initial_scale=True))
    assert service.template.annotations["autoscaling.knative.dev/initial-scale"] == "0"
    assert parse_service(service_to_dict(service), admitted()) == service


@pytest.mark.parametrize("value", ["-1", "1.5", "one", ""])
def test_allowing_zero_initial_scale_allows_nothing_else(value: str) -> None:
    doc = manifest()
    annotate("autoscaling.knative.dev/initial-scale", value)(doc)
    with pytest.raises(ServiceError) as caught:
        parse_service(doc, ServingConfig(allow_zero_initial_scale=True))
    message = str(caught.value)
    assert message.startswith(f"{ANN}[autoscaling.knative.dev/initial-scale]: "), message
    assert ("invalid value" in message or "must be greater than 0" in message), message
    assert "\n" not in message


def test_a_zero_initial_scale_in_a_list_names_the_document_and_nothing_loads() -> None:
    good = manifest()
    zero = manifest()
    zero["metadata"]["name"] = "zero"
    annotate("autoscaling.knative.dev/initial-scale", "0")(zero)
    text = yaml.safe_dump_all([good, zero])
    with pytest.raises(ServiceError) as caught:
        load_services(text)
    message = str(caught.value)
    assert message.startswith(f"document 1: {ANN}[autoscaling.knative.dev/initial-scale]: ")
    assert "\n" not in message
    allowed = load_services(text, ServingConfig(allow_zero_initial_scale=True))
    assert [s.name for s in allowed] == ["hello", "zero"]


def test_admitted_reads_back_what_was_accepted_and_keeps_other_settings() -> None:
    config = ServingConfig(revision_timeout_s=120, allow_zero_initial_scale=False)
    read_back = admitted(config)
    assert read_back.allow_zero_initial_scale
    assert read_back.revision_timeout_s == 120
    assert not config.allow_zero_initial_scale


def test_timeout_zero_means_the_default_and_the_maximum_is_configurable() -> None:
    doc = manifest()
    template_spec(timeoutSeconds=0)(doc)
    assert parse_service(doc).template.timeout_seconds == 300
    template_spec(timeoutSeconds=900)(doc)
    config = ServingConfig(max_revision_timeout_s=3600, revision_timeout_s=120)
    assert parse_service(doc, config).template.timeout_seconds == 900
    template_spec(timeoutSeconds=0)(doc)
    assert parse_service(doc, config).template.timeout_seconds == 120


def test_cluster_local_label() -> None:
    doc = manifest()
    metadata(labels={"networking.knative.dev/visibility": "cluster-local"})(doc)
    assert parse_service(doc).cluster_local


def test_named_template_and_pinned_traffic_parse() -> None:
    doc = manifest()
    setter("spec", "template", "metadata", "name", value="hello-v2")(doc)
    traffic(
        {"revisionName": "hello-v1", "percent": 10, "tag": "v1"},
        {"revisionName": "hello-v2", "latestRevision": False, "percent": 90},
        {"latestRevision": True, "percent": 0, "tag": "latest"},
    )(doc)
    service = parse_service(doc)
    assert service.template.name == "hello-v2"
    assert [(t.revision_name, t.latest_revision, t.percent, t.tag) for t in service.traffic] == [
        ("hello-v1", False, 10, "v1"),
        ("hello-v2", False, 90, ""),
        ("", True, 0, "latest"),
    ]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("6s", 6.0), ("1m30s", 90.0), ("1.5h", 5400.0), ("250ms", 0.25), ("0", 0.0), ("-2s", -2.0)],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "6", "s", "1d", "1m 30s", "abc"])
def test_not_go_durations(text: str) -> None:
    assert parse_go_duration(text) is None


def test_parsing_does_not_modify_the_input() -> None:
    doc = manifest()
    before = copy.deepcopy(doc)
    parse_service(doc)
    assert doc == before


A = "autoscaling.knative.dev/"
KNATIVE_ANNOTATION_CASES: list[tuple[str, dict[str, str], str, str]] = [
    # (case name, annotations, the key named, Knative's message or "" when valid)
    ("minScale is -1", {"min-scale": "-1"}, "min-scale", "expected 0 <= -1 <= 2147483647"),
    ("maxScale is huuuuuuuge", {"max-scale": "2147483648"}, "max-scale",
     "expected 0 <= 2147483648 <= 2147483647"),
    ("minScale is foo", {"min-scale": "foo"}, "min-scale", "invalid value: foo"),
    ("minScale is 5, maxScale is 2", {"min-scale": "5", "max-scale": "2"}, "max-scale",
     "max-scale=2 is less than min-scale=5"),
    ("min-scale, activation-scale, max-scale all set appropriately",
     {"min-scale": "1", "activation-scale": "2", "max-scale": "3"}, "", ""),
    ("min-scale is greater than activation-scale",
     {"min-scale": "3", "activation-scale": "2"}, "activation-scale",
     "min-scale=3 is greater than activation-scale=2"),
    ("max-scale is less than activation-scale",
     {"max-scale": "1", "activation-scale": "2"}, "activation-scale",
     "max-scale=1 is less than activation-scale=2"),
    ("valid algorithm on KPA", {"metric-aggregation-algorithm": "linear"}, "", ""),
    ("empty algorithm", {"metric-aggregation-algorithm": ""}, "", ""),
    ("random algorithm on KPA", {"metric-aggregation-algorithm": "random-selection"},
     "metric-aggregation-algorithm", "invalid value: random-selection"),
    ("panic window percentage bad", {"panic-window-percentage": "-1"},
     "panic-window-percentage", "expected 1 <= -1 <= 100"),
    ("panic window percentage bad2", {"panic-window-percentage": "202"},
     "panic-window-percentage", "expected 1 <= 202 <= 100"),
    ("panic window percentage bad3", {"panic-window-percentage": "fifty"},
     "panic-window-percentage", "invalid value: fifty"),
    ("panic threshold percentage bad2", {"panic-threshold-percentage": "109"},
     "panic-threshold-percentage", "expected 110 <= 109 <= 1000"),
    ("panic threshold percentage bad2.5", {"panic-threshold-percentage": "10009"},
     "panic-threshold-percentage", "expected 110 <= 10009 <= 1000"),
    ("target negative", {"target": "-11"}, "target", "target -11 should be at least 0.01"),
    ("target 0", {"target": "0"}, "target", "target 0 should be at least 0.01"),
    ("invalid target", {"target": "100}"}, "target", "invalid value: 100}"),
    ("TBC negative", {"target-burst-capacity": "-11"}, "target-burst-capacity",
     "invalid value: -11"),
    ("TBC 0", {"target-burst-capacity": "0"}, "", ""),
    ("TBC 19880709", {"target-burst-capacity": "19880709"}, "", ""),
    ("TBC -1", {"target-burst-capacity": "-1"}, "", ""),
    ("TU too small", {"target-utilization-percentage": "0"},
     "target-utilization-percentage", "expected 1 <= 0 <= 100"),
    ("TU invalid", {"target-utilization-percentage": "dghyak"},
     "target-utilization-percentage", "invalid value: dghyak"),
    ("window invalid", {"window": "jerry-was-a-racecar-driver"}, "window",
     "invalid value: jerry-was-a-racecar-driver"),
    ("window too short", {"window": "1s"}, "window", "expected 6s <= 1s <= 1h0m0s"),
    ("window too long", {"window": "365h"}, "window", "expected 6s <= 365h <= 1h0m0s"),
    ("window too precise", {"window": "1m9s82ms"}, "window",
     "must be specified with at most second precision"),
    ("valid 0 last pod scaledown timeout", {"scale-to-zero-pod-retention-period": "0"}, "", ""),
    ("valid positive last pod scaledown timeout",
     {"scale-to-zero-pod-retention-period": "21m31s"}, "", ""),
    ("invalid positive last pod scaledown timeout",
     {"scale-to-zero-pod-retention-period": "311m"}, "scale-to-zero-pod-retention-period",
     "expected 0s <= 311m <= 1h0m0s"),
    ("invalid negative last pod scaledown timeout",
     {"scale-to-zero-pod-retention-period": "-42s"}, "scale-to-zero-pod-retention-period",
     "expected 0s <= -42s <= 1h0m0s"),
    ("invalid last pod scaledown timeout",
     {"scale-to-zero-pod-retention-period": "twenty-two-minutes-and-five-seconds"},
     "scale-to-zero-pod-retention-period",
     "invalid value: twenty-two-minutes-and-five-seconds"),
    ("valid 0 scale down delay", {"scale-down-delay": "0"}, "", ""),
    ("valid positive scale down delay", {"scale-down-delay": "21m31s"}, "", ""),
    ("invalid positive scale down delay", {"scale-down-delay": "311m"}, "scale-down-delay",
     "expected 0s <= 311m <= 1h0m0s"),
    ("invalid positive scale down delay - too precise", {"scale-down-delay": "42.5s"},
     "scale-down-delay", "must be specified with at most second precision"),
    ("invalid negative scale down delay", {"scale-down-delay": "-42s"}, "scale-down-delay",
     "expected 0s <= -42s <= 1h0m0s"),
    ("invalid scale down delay", {"scale-down-delay": "twenty-two-minutes-and-five-seconds"},
     "scale-down-delay", "invalid value: twenty-two-minutes-and-five-seconds"),
    ("invalid metric for default class(KPA)", {"metric": "cpu"}, "metric",
     "invalid value: cpu"),
    ("valid class KPA with metric RPS", {"metric": "rps"}, "", ""),
    ("valid class KPA with metric Concurrency", {"metric": "concurrency"}, "", ""),
    ("initial scale is zero but cluster doesn't allow", {"initial-scale": "0"},
     "initial-scale", "invalid value: 0, initial-scale=0 not allowed by cluster"),
    ("initial scale is greater than 0", {"initial-scale": "2"}, "", ""),
    ("initial scale is less than 0", {"initial-scale": "-1"}, "initial-scale",
     "invalid value: -1, initial-scale must be greater than 0"),
    ("initial scale non-parseable", {"initial-scale": "invalid"}, "initial-scale",
     "invalid value: invalid"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("annotations", "key", "message"),
    [case[1:] for case in KNATIVE_ANNOTATION_CASES],
    ids=[
        f"annotation_validation_test.go: TestValidateAnnotations/{case[0]}"
        for case in KNATIVE_ANNOTATION_CASES
    ],
)
def test_knative_annotation_validation(annotations: dict[str, str], key: str, message: str) -> None:
    """annotation_validation_test.go: TestValidateAnnotations: Knative's message after the
    field path, one line."""
    given = {A + k: v for k, v in annotations.items()}
    if not message:
        autoscaling_settings(given)
        return
    with pytest.raises(ServiceError) as caught:
        autoscaling_settings(given)
    text = str(caught.value)
    assert text.startswith(f"{ANN}[{A}{key}]: {message}"), text
    assert "\n" not in text


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("1m3s", ""),
        ("1m3s34ms", "progress-deadline=1m3s34ms is not at second precision"),
        ("not-a-duration", "invalid value: not-a-duration"),
        ("-1m3s", "progress-deadline=-1m3s must be positive"),
    ],
    ids=[
        "revision_validation_test.go: TestRevisionTemplateSpecValidation/"
        + name
        for name in (
            "Valid progress-deadline",
            "progress-deadline too precise",
            "invalid progress-deadline duration",
            "negative progress-deadline",
        )
    ],
)
def test_progress_deadline_annotation(value: str, message: str) -> None:
    """revision_validation_test.go: the serving.knative.dev/progress-deadline cases."""
    doc = manifest()
    annotate("serving.knative.dev/progress-deadline", value)(doc)
    if not message:
        assert parse_service(doc).template.annotations
        return
    with pytest.raises(ServiceError) as caught:
        parse_service(doc)
    text = str(caught.value)
    assert text.startswith(f"{ANN}[serving.knative.dev/progress-deadline]: {message}"), text
    assert "\n" not in text
