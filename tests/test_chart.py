"""The Helm chart (charts/wakegate), rendered and linted by the real Helm v4 library.

helm-python-sdk binds Helm's Go SDK, so rendering, schema validation and lint here are
exactly what `helm template`/`helm install`/`helm lint` do. Every rendered manifest is
parsed and cross-checked: selectors against pod labels, Service ports against container
ports, the bootstrap's ADS address against the control-plane Service and the controller's
flags, RBAC against the list of what the controller does with the API. The bootstrap is
compared with `build_bootstrap` and run by the real Envoy: `--mode validate` for every
variant, and a live gateway against the real xDS server whose health listener must report
ready while the admin interface stays unreachable.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import datetime
import json
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import helm_python as helm
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.fake_kube import FakeKube
from tests.support.backends import free_port
from tests.support.envoy import xds_control_plane
from tests.test_cluster_fake_kube import eventually, known_backend, lease_holder, simple_kingress
from wakegate.controller import add_controller_parser, run_controller
from wakegate.xds.bootstrap import XDS_CLUSTER, XdsTls, build_bootstrap
from wakegate.xds.resources import CLUSTER, LISTENER
from wakegate.xds.translate import GatewayConfig

CHART = Path(__file__).resolve().parents[1] / "charts" / "wakegate"
ENVOY = Path(sys.executable).with_name("envoy")
KUBE_VERSION = "v1.30.0"
DEFAULT_CLASS = "wakegate.ingress.networking.knative.dev"
LISTENERS = GatewayConfig()

Obj = dict[str, Any]

LEASES = ("coordination.k8s.io", "leases")
"""Granted only in the leader-election namespace (a Role), never cluster-wide."""


async def _controller_calls(tmp: Path) -> frozenset[tuple[str, str, str]]:
    """Every (apiGroup, resource, verb) `wakegate controller` asks of the API server in
    a whole life, seen by the fake API server: it starts, lists and watches, becomes the
    leader, writes a KIngress status, follows a change, renews its Lease and stops."""
    async with FakeKube(bookmark_interval_s=0.2) as kube:
        known_backend(kube, "svc")
        kube.apply(simple_kingress("hello", "hello.example.com", "svc"))
        parser = argparse.ArgumentParser()
        add_controller_parser(parser.add_subparsers(), "controller")
        args = parser.parse_args(
            ["controller", "--kubeconfig", str(kube.kubeconfig(tmp / "kubeconfig")),
             "--xds-host", "127.0.0.1", "--xds-port", "0", "--health-host", "127.0.0.1",
             "--health-port", "0", "--metrics-host", "127.0.0.1", "--metrics-port", "0",
             "--gateway-service", "knative-serving/wakegate-gateway-internal"]
        )  # fmt: skip
        stop = asyncio.Event()
        task = asyncio.create_task(run_controller(args, stop))
        try:
            await eventually(lambda: lease_holder(kube), what="leader elected")
            await eventually(lambda: kube.requests_to("PATCH", "/ingresses/hello/status"))
            renewals = len(kube.requests_to("PUT", "/leases/"))
            await eventually(
                lambda: len(kube.requests_to("PUT", "/leases/")) > renewals,
                timeout=15,
                what="lease renewed",
            )
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
        return frozenset(r.authorization for r in kube.requests)


@pytest.fixture(scope="module")
def controller_calls(tmp_path_factory: pytest.TempPathFactory) -> frozenset[tuple[str, str, str]]:
    return asyncio.run(_controller_calls(tmp_path_factory.mktemp("controller")))


# --- rendering ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    values: Obj = field(default_factory=dict)
    release: str = "wakegate"
    namespace: str = "wakegate-system"


CASES = [
    Case("defaults"),
    Case(
        "nodeport",
        {"gateway": {"service": {"type": "NodePort", "nodePorts": {"http": 30080}}}},
    ),
    Case("mtls", {"xdsTLS": {"enabled": True}}),
    Case("ack-readiness", {"controlPlane": {"gatewayProbe": {"enabled": False}}}),
    Case(
        "monitoring",
        {"metrics": {"serviceMonitor": {"enabled": True}, "gatewayPodMonitor": {"enabled": True}}},
    ),
    Case(
        "single-replica",
        {
            "controlPlane": {
                "replicas": 1,
                "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}},
            },
            "gateway": {
                "replicas": 1,
                "resources": {"requests": {"cpu": 1, "memory": "256Mi"}, "limits": {"cpu": 2}},
                "concurrency": 0,
                "preStopSleepSeconds": 0,
            },
        },
    ),
    Case(
        "custom-class-and-namespace",
        {
            "ingressClass": "edge.ingress.example.com",
            "clusterDomain": "corp.local",
            "controlPlane": {
                "ports": {"xds": 19000, "metrics": 9191, "health": 9292},
                "leaderElection": {"namespace": "kube-system"},
                "verbose": True,
            },
            "gateway": {
                "nodeCluster": "edge-gateways",
                "deltaXds": True,
                "healthPort": 9000,
                "adminPort": 9001,
                "maxDownstreamConnections": 1000,
            },
            "xdsTLS": {"enabled": True, "serverName": "xds.example.com"},
        },
        release="edge",
        namespace="edge-ingress",
    ),
]


@dataclass
class Rendered:
    case: Case
    values: Obj
    objects: list[Obj]
    notes: str

    def all(self, kind: str) -> list[Obj]:
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str, name: str) -> Obj:
        found = [o for o in self.all(kind) if o["metadata"]["name"] == name]
        assert len(found) == 1, f"{kind}/{name}: {len(found)} rendered"
        return found[0]

    @property
    def fullname(self) -> str:
        return (
            self.case.release
            if "wakegate" in self.case.release
            else f"{self.case.release}-wakegate"
        )

    def host(self, service: str) -> str:
        return f"{service}.{self.case.namespace}.svc.{self.values['clusterDomain']}"

    def bootstrap(self) -> Obj:
        cm = self.one("ConfigMap", f"{self.fullname}-gateway-bootstrap")
        loaded: Obj = yaml.safe_load(cm["data"]["bootstrap.yaml"])
        return loaded

    def control_plane(self) -> Obj:
        return self.one("Deployment", f"{self.fullname}-control-plane")

    def gateway(self) -> Obj:
        return self.one("Deployment", f"{self.fullname}-gateway")


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def render(chart: helm.Chart, case: Case) -> Rendered:
    manifests = chart.render(case.values, name=case.release, namespace=case.namespace)
    objects: list[Obj] = []
    notes = ""
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return Rendered(case, chart.merge_values(case.values), objects, notes)


@pytest.fixture(scope="module", params=CASES, ids=[c.id for c in CASES])
def rendered(request: pytest.FixtureRequest, chart: helm.Chart) -> Rendered:
    case: Case = request.param
    return render(chart, case)


def container(deployment: Obj) -> Obj:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    found: Obj = containers[0]
    return found


def flags(args: list[str]) -> dict[str, str]:
    """`--name=value` arguments as a mapping."""
    return dict(a[2:].split("=", 1) for a in args if a.startswith("--") and "=" in a)


def resolve_port(target: int | str, ctr: Obj) -> int:
    """A Service targetPort or probe port (number or name) as a container port number."""
    ports = {p["name"]: p["containerPort"] for p in ctr["ports"]}
    if isinstance(target, str):
        assert target in ports, f"port {target!r} is not a port of container {ctr['name']}"
        return int(ports[target])
    assert target in ports.values(), f"port {target} is not a port of container {ctr['name']}"
    return target


# --- every variant ------------------------------------------------------------------------


def test_lint_is_clean(rendered: Rendered) -> None:
    report = helm.lint(
        CHART,
        rendered.case.values,
        strict=True,
        namespace=rendered.case.namespace,
        kube_version=KUBE_VERSION,
    )
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not report["errors"] and not problems, report


def test_expected_objects(rendered: Rendered) -> None:
    r, fullname = rendered, rendered.fullname
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in r.objects)
    expected = {
        ("Deployment", f"{fullname}-control-plane"),
        ("Deployment", f"{fullname}-gateway"),
        ("Service", f"{fullname}-control-plane"),
        ("Service", f"{fullname}-gateway"),
        ("Service", f"{fullname}-gateway-internal"),
        ("ConfigMap", f"{fullname}-gateway-bootstrap"),
        ("ServiceAccount", f"{fullname}-control-plane"),
        ("ServiceAccount", f"{fullname}-gateway"),
        ("ClusterRole", f"{fullname}-control-plane"),
        ("ClusterRoleBinding", f"{fullname}-control-plane"),
        ("Role", f"{fullname}-control-plane-leader-election"),
        ("RoleBinding", f"{fullname}-control-plane-leader-election"),
    }
    assert expected <= set(kinds), kinds
    assert len(kinds) == len(set(kinds)), "an object is rendered twice"
    for obj in r.objects:
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == r.case.release
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/name"] == "wakegate"
        if obj["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            namespace = obj["metadata"]["namespace"]
            if obj["kind"] in ("Role", "RoleBinding"):
                assert namespace == (
                    r.values["controlPlane"]["leaderElection"]["namespace"] or r.case.namespace
                )
            else:
                assert namespace == r.case.namespace


def test_selectors_match_pods_and_services_select_them(rendered: Rendered) -> None:
    pods: dict[str, Obj] = {}
    for deployment in rendered.all("Deployment"):
        selector = deployment["spec"]["selector"]["matchLabels"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items(), deployment["metadata"]["name"]
        pods[deployment["metadata"]["name"]] = deployment
    for service in rendered.all("Service"):
        selector = service["spec"]["selector"]
        chosen = [
            d
            for d in pods.values()
            if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(chosen) == 1, f"service {service['metadata']['name']} selects {len(chosen)}"
        for port in service["spec"]["ports"]:
            resolve_port(port["targetPort"], container(chosen[0]))
    for pdb in rendered.all("PodDisruptionBudget"):
        selector = pdb["spec"]["selector"]["matchLabels"]
        chosen = [
            d
            for d in pods.values()
            if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(chosen) == 1 and chosen[0]["spec"]["replicas"] > 1


def test_probes_and_security(rendered: Rendered) -> None:
    for deployment in rendered.all("Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        ctr = container(deployment)
        for probe in ("livenessProbe", "readinessProbe"):
            resolve_port(ctr[probe]["httpGet"]["port"], ctr)
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] > 0
        assert ctr["securityContext"]["readOnlyRootFilesystem"] is True
        assert ctr["securityContext"]["allowPrivilegeEscalation"] is False
        assert ctr["securityContext"]["capabilities"]["drop"] == ["ALL"]
        mounted = {m["name"] for m in ctr["volumeMounts"]}
        assert mounted == {v["name"] for v in pod["volumes"]}


def test_ports_line_up(rendered: Rendered) -> None:
    r, fullname = rendered, rendered.fullname
    cp = container(r.control_plane())
    args = flags(cp["args"])
    assert cp["args"][cp["args"].index("controller") + 1 :] == [
        a for a in cp["args"] if a.startswith("--")
    ], "flags come after the subcommand"
    cp_service = r.one("Service", f"{fullname}-control-plane")
    xds_port = next(p for p in cp_service["spec"]["ports"] if p["name"] == "grpc-xds")
    assert resolve_port(xds_port["targetPort"], cp) == int(args["xds-port"])
    assert xds_port["port"] == int(args["xds-port"]) == r.values["controlPlane"]["ports"]["xds"]

    # The gateway's ADS cluster reaches the control-plane Service on its xDS port.
    xds = next(c for c in r.bootstrap()["static_resources"]["clusters"] if c["name"] == XDS_CLUSTER)
    address = xds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert address["socket_address"] == {
        "address": r.host(cp_service["metadata"]["name"]),
        "port_value": xds_port["port"],
    }

    # Gateway Services target the listeners the control plane builds (GatewayConfig).
    gw = container(r.gateway())
    external = r.one("Service", f"{fullname}-gateway")
    internal = r.one("Service", f"{fullname}-gateway-internal")
    targets = {p["name"]: resolve_port(p["targetPort"], gw) for p in external["spec"]["ports"]}
    assert targets == {"http": LISTENERS.external_port, "https": LISTENERS.tls_port}
    assert {p["port"] for p in external["spec"]["ports"]} == {80, 443}
    assert [resolve_port(p["targetPort"], gw) for p in internal["spec"]["ports"]] == [
        LISTENERS.internal_port
    ]
    assert [p["port"] for p in internal["spec"]["ports"]] == [80]
    assert internal["spec"]["type"] == "ClusterIP"
    assert external["spec"]["type"] == r.values["gateway"]["service"]["type"]

    # The controller reports the Services' addresses and shares the gateways' node cluster.
    assert args["gateway-external-address"] == r.host(external["metadata"]["name"])
    assert args["gateway-internal-address"] == r.host(internal["metadata"]["name"])
    assert args["node-cluster"] == r.bootstrap()["node"]["cluster"]
    assert args["ingress-class"] == r.values["ingressClass"]
    assert args["metrics-port"] == str(resolve_port("http-metrics", cp))
    assert args["health-port"] == str(resolve_port("http-health", cp))
    election = r.values["controlPlane"]["leaderElection"]["namespace"] or r.case.namespace
    assert args["leader-election-namespace"] == election

    # The controller probes the pods behind the cluster-local Service on the port that
    # Service targets, which is the gateway's cluster-local listener.
    probe = r.values["controlPlane"]["gatewayProbe"]
    probe_flags = {"gateway-service", "gateway-probe-port", "gateway-probe-concurrency"}
    if probe["enabled"]:
        assert args["gateway-service"] == f"{r.case.namespace}/{internal['metadata']['name']}"
        (local_port,) = internal["spec"]["ports"]
        probed = int(args["gateway-probe-port"])
        assert probed == LISTENERS.internal_port == resolve_port(local_port["targetPort"], gw)
        assert int(args["gateway-probe-concurrency"]) == probe["concurrency"]
    else:
        assert not probe_flags & args.keys()


def test_bootstrap_is_build_bootstrap_plus_health_listener(rendered: Rendered) -> None:
    r = rendered
    values = r.values
    gw_values = values["gateway"]
    tls = None
    if values["xdsTLS"]["enabled"]:
        tls = XdsTls(
            ca_file="/etc/wakegate/xds-tls/ca.crt",
            cert_file="/etc/wakegate/xds-tls/tls.crt",
            key_file="/etc/wakegate/xds-tls/tls.key",
            server_name=values["xdsTLS"]["serverName"] or r.host(f"{r.fullname}-control-plane"),
        )
    expected = build_bootstrap(
        node_id=f"{gw_values['nodeCluster']}-0",
        node_cluster=gw_values["nodeCluster"],
        xds_host=r.host(f"{r.fullname}-control-plane"),
        xds_port=values["controlPlane"]["ports"]["xds"],
        admin_port=gw_values["adminPort"],
        delta=gw_values["deltaXds"],
        xds_tls=tls,
        max_downstream_connections=gw_values["maxDownstreamConnections"],
    )
    actual = r.bootstrap()
    health, admin_cluster = split_health(actual)
    assert actual == expected

    # Admin stays on loopback; the health listener proxies only /ready and
    # /stats/prometheus to it and is the port the readiness probe uses.
    assert actual["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
    admin_endpoint = admin_cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    assert admin_endpoint["endpoint"]["address"]["socket_address"] == {
        "address": "127.0.0.1",
        "port_value": gw_values["adminPort"],
    }
    gw = container(r.gateway())
    probe = gw["readinessProbe"]["httpGet"]
    assert probe["path"] == "/ready"
    assert resolve_port(probe["port"], gw) == health["address"]["socket_address"]["port_value"]
    hcm = health["filter_chains"][0]["filters"][0]["typed_config"]
    routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
    proxied = {r["match"]["path"] for r in routes if r.get("route", {}).get("cluster")}
    assert proxied == {"/ready", "/stats/prometheus"}
    assert all(set(route["match"]) == {"path"} for route in routes), "exact paths only"

    # Envoy runs with the pod name as node.id and the configured bootstrap.
    args = gw["args"]
    assert gw["command"] == ["envoy"]
    assert args[args.index("-c") + 1] == "/etc/envoy/bootstrap.yaml"
    assert args[args.index("--service-node") + 1] == "$(POD_NAME)"
    assert {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} in gw[
        "env"
    ]
    mount = next(m for m in gw["volumeMounts"] if m["name"] == "bootstrap")
    assert mount["mountPath"] == "/etc/envoy"


def split_health(bootstrap: Obj) -> tuple[Obj, Obj]:
    """Remove the chart's health listener and admin cluster from `bootstrap`; return them."""
    static = bootstrap["static_resources"]
    (health,) = static.pop("listeners")
    assert health["name"] == "wakegate_health"
    admin = next(c for c in static["clusters"] if c["name"] == "wakegate_admin")
    static["clusters"].remove(admin)
    return health, admin


def test_rbac_is_exactly_what_the_controller_needs(
    rendered: Rendered, controller_calls: frozenset[tuple[str, str, str]]
) -> None:
    """The grants are the API calls the controller was seen making (verbs by resources),
    no more, no fewer: no Events are written, so none may be."""
    r = rendered

    def grants(rules: list[Obj]) -> set[tuple[str, str, str]]:
        out = set()
        for rule in rules:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        assert "*" not in (group, resource, verb), rule
                        out.add((group, resource, verb))
        return out

    cluster_wide = grants([rule for role in r.all("ClusterRole") for rule in role["rules"]])
    namespaced = grants([rule for role in r.all("Role") for rule in role["rules"]])
    leases = {call for call in controller_calls if call[:2] == LEASES}
    assert {verb for *_, verb in leases} == {"get", "create", "update"}
    assert namespaced == leases
    assert cluster_wide == controller_calls - leases
    assert ("", "events", "create") not in cluster_wide

    sa_name = r.control_plane()["spec"]["template"]["spec"]["serviceAccountName"]
    r.one("ServiceAccount", sa_name)
    for binding in r.all("ClusterRoleBinding") + r.all("RoleBinding"):
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": sa_name, "namespace": r.case.namespace}
        ]
        role_kind = "ClusterRole" if binding["kind"] == "ClusterRoleBinding" else "Role"
        assert binding["roleRef"]["kind"] == role_kind
        r.one(role_kind, binding["roleRef"]["name"])
    gateway_pod = r.gateway()["spec"]["template"]["spec"]
    assert gateway_pod["automountServiceAccountToken"] is False
    assert gateway_pod["serviceAccountName"] != sa_name


def test_variant_specifics(rendered: Rendered) -> None:
    r, case = rendered, rendered.case
    values = r.values
    cp, gw = r.control_plane(), r.gateway()
    pdbs = {p["metadata"]["name"] for p in r.all("PodDisruptionBudget")}
    expected_pdbs = {
        f"{r.fullname}-{name}"
        for name, key in (("control-plane", "controlPlane"), ("gateway", "gateway"))
        if values[key]["replicas"] > 1
    }
    assert pdbs == expected_pdbs
    assert cp["spec"]["replicas"] == values["controlPlane"]["replicas"]
    assert gw["spec"]["replicas"] == values["gateway"]["replicas"]
    assert container(cp)["resources"] == values["controlPlane"]["resources"]
    assert container(gw)["resources"] == values["gateway"]["resources"]
    gw_args = container(gw)["args"]
    assert ("--concurrency" in gw_args) == (values["gateway"]["concurrency"] > 0)
    assert ("lifecycle" in container(gw)) == (values["gateway"]["preStopSleepSeconds"] > 0)

    external = r.one("Service", f"{r.fullname}-gateway")
    node_ports = {p["name"]: p.get("nodePort") for p in external["spec"]["ports"]}
    if case.id == "nodeport":
        assert node_ports == {"http": 30080, "https": None}
        assert "nodePort}" in r.notes
    else:
        assert node_ports == {"http": None, "https": None}

    monitors = r.all("ServiceMonitor") + r.all("PodMonitor")
    if case.id == "monitoring":
        (service_monitor,) = r.all("ServiceMonitor")
        target = r.one("Service", f"{r.fullname}-control-plane")
        selector = service_monitor["spec"]["selector"]["matchLabels"]
        assert selector.items() <= target["metadata"]["labels"].items()
        port_names = {p["name"] for p in target["spec"]["ports"]}
        assert {e["port"] for e in service_monitor["spec"]["endpoints"]} <= port_names
        (pod_monitor,) = r.all("PodMonitor")
        endpoint = pod_monitor["spec"]["podMetricsEndpoints"][0]
        assert endpoint["path"] == "/stats/prometheus"
        resolve_port(endpoint["port"], container(gw))
    else:
        assert not monitors

    tls_volumes = {
        d["metadata"]["name"]: [
            v["secret"]["secretName"]
            for v in d["spec"]["template"]["spec"]["volumes"]
            if "secret" in v
        ]
        for d in (cp, gw)
    }
    if values["xdsTLS"]["enabled"]:
        assert tls_volumes == {
            cp["metadata"]["name"]: [values["xdsTLS"]["controlPlaneSecretName"]],
            gw["metadata"]["name"]: [values["xdsTLS"]["gatewaySecretName"]],
        }
        assert flags(container(cp)["args"])["xds-tls-dir"] == "/etc/wakegate/xds-tls"
        xds = r.bootstrap()["static_resources"]["clusters"][0]
        assert xds["transport_socket"]["name"] == "envoy.transport_sockets.tls"
    else:
        assert tls_volumes == {cp["metadata"]["name"]: [], gw["metadata"]["name"]: []}
        assert "xds-tls-dir" not in flags(container(cp)["args"])

    if case.id == "custom-class-and-namespace":
        assert container(cp)["args"][0] == "-v"
        assert r.bootstrap()["dynamic_resources"]["ads_config"]["api_type"] == "DELTA_GRPC"

    # NOTES tell how to point Knative at this ingress class and where the gateway is.
    patch = json.dumps({"data": {"ingress-class": values["ingressClass"]}}, separators=(",", ":"))
    assert "kubectl patch configmap/config-network -n knative-serving" in r.notes
    assert patch in r.notes
    assert f"kubectl get service {r.fullname}-gateway -n {case.namespace}" in r.notes


# --- values: documented, validated --------------------------------------------------------


def test_every_value_is_documented_and_in_the_schema(chart: helm.Chart) -> None:
    """Each key of values.yaml has a schema entry and vice versa; each setting has a comment."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    lines = (CHART / "values.yaml").read_text().splitlines()
    root = yaml.compose("\n".join(lines))
    assert isinstance(root, yaml.MappingNode)
    undocumented: list[str] = []

    def walk(node: yaml.MappingNode, spec: Obj, path: str) -> None:
        assert spec.get("additionalProperties") is False, f"{path or '/'} accepts any key"
        keys = {k.value for k, _ in node.value}
        assert keys == set(spec["properties"]), f"{path}: values {keys} vs schema"
        assert set(spec["required"]) == keys, f"{path}: not every key is required"
        for key_node, value_node in node.value:
            key = f"{path}.{key_node.value}" if path else key_node.value
            child = spec["properties"][key_node.value]
            if "properties" in child:
                assert isinstance(value_node, yaml.MappingNode), key
                walk(value_node, child, key)
            elif not lines[key_node.start_mark.line - 1].lstrip().startswith("#"):
                undocumented.append(key)

    walk(root, schema, "")
    assert not undocumented, f"values without a comment: {undocumented}"
    chart.validate_schema(chart.values)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (
            {"gateway": {"service": {"type": "Foo"}}},
            ["/gateway/service/type", "one of 'LoadBalancer', 'NodePort'"],
        ),
        ({"controlPlane": {"replicas": -1}}, ["/controlPlane/replicas", "minimum"]),
        ({"gatway": {"replicas": 3}}, ["gatway", "not allowed"]),
        ({"controlPlane": {"replica": 3}}, ["/controlPlane", "replica"]),
        ({"gateway": {"healthPort": 70000}}, ["/gateway/healthPort", "maximum"]),
        ({"gateway": {"logLevel": "loud"}}, ["/gateway/logLevel"]),
        ({"metrics": {"serviceMonitor": {"interval": "often"}}}, ["serviceMonitor/interval"]),
        ({"ingressClass": ""}, ["/ingressClass"]),
        (
            {"controlPlane": {"gatewayProbe": {"concurrency": 0}}},
            ["/controlPlane/gatewayProbe/concurrency", "minimum"],
        ),
    ],
    ids=[
        "service-type",
        "negative-replicas",
        "unknown-top-level",
        "nested-typo",
        "port-range",
        "log-level",
        "duration",
        "empty-class",
        "probe-concurrency",
    ],
)
def test_schema_rejects_invalid_values(chart: helm.Chart, values: Obj, expected: list[str]) -> None:
    with pytest.raises(helm.HelmValuesError) as error:
        chart.render(values, name="wakegate", namespace="wakegate-system")
    message = str(error.value)
    assert "values don't meet the specifications of the schema" in message
    for part in expected:
        assert part in message, message
    report = helm.lint(CHART, values, namespace="wakegate-system", kube_version=KUBE_VERSION)
    found = report["errors"] + [m["error"] for m in report["messages"] if m["severity"] == 3]
    assert any(expected[0] in text for text in found), report


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"gateway": {"healthPort": 8081}}, "gateway.healthPort 8081 clashes"),
        ({"gateway": {"adminPort": 8443}}, "gateway.adminPort 8443 clashes"),
        ({"gateway": {"healthPort": 9901}}, "gateway.healthPort and gateway.adminPort must differ"),
        (
            {"gateway": {"preStopSleepSeconds": 30, "terminationGracePeriodSeconds": 10}},
            "gateway.preStopSleepSeconds must be shorter",
        ),
    ],
    ids=["health-on-listener", "admin-on-listener", "health-on-admin", "pre-stop-too-long"],
)
def test_cross_field_checks_fail_rendering(chart: helm.Chart, values: Obj, message: str) -> None:
    with pytest.raises(helm.HelmRenderError, match=re.escape(message)):
        chart.render(values, name="wakegate")


# --- the real Envoy -----------------------------------------------------------------------


def _certificates(directory: Path, server_name: str) -> None:
    """ca.crt plus a client certificate (tls.crt, tls.key) in `directory`."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "wakegate test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gateway")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(server_name)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    (directory / "ca.crt").write_bytes(ca.public_bytes(pem))
    (directory / "tls.crt").write_bytes(cert.public_bytes(pem))
    (directory / "tls.key").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


def local_bootstrap(r: Rendered, directory: Path, xds_port: int) -> Obj:
    """The rendered bootstrap with the control plane at 127.0.0.1:`xds_port` and the
    xDS TLS files (if any) written under `directory`."""
    bootstrap = copy.deepcopy(r.bootstrap())
    xds = next(c for c in bootstrap["static_resources"]["clusters"] if c["name"] == XDS_CLUSTER)
    endpoint = xds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    endpoint["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": xds_port}
    xds["type"] = "STATIC"
    del xds["dns_lookup_family"]
    if "transport_socket" in xds:
        context = xds["transport_socket"]["typed_config"]
        _certificates(directory, context["sni"])
        common = context["common_tls_context"]
        (pair,) = common["tls_certificates"]
        pair["certificate_chain"]["filename"] = str(directory / "tls.crt")
        pair["private_key"]["filename"] = str(directory / "tls.key")
        common["validation_context"]["trusted_ca"]["filename"] = str(directory / "ca.crt")
    return bootstrap


def envoy_command(r: Rendered, config: Path, pod_name: str) -> list[str]:
    """The gateway container's command line, with its config at `config`."""
    ctr = container(r.gateway())
    args = [pod_name if a == "$(POD_NAME)" else a for a in ctr["args"]]
    args[args.index("-c") + 1] = str(config)
    assert ctr["command"] == ["envoy"]
    return [str(ENVOY), *args]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_envoy_validates_the_bootstrap(chart: helm.Chart, case: Case, tmp_path: Path) -> None:
    r = render(chart, case)
    config = tmp_path / "bootstrap.json"
    config.write_text(json.dumps(local_bootstrap(r, tmp_path, 18000)))
    result = subprocess.run(
        [*envoy_command(r, config, "gateway-0"), "--mode", "validate"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@contextlib.asynccontextmanager
async def gateway_process(command: list[str]) -> AsyncIterator[asyncio.subprocess.Process]:
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()


@pytest.mark.envoy
async def test_gateway_health_listener_reports_ready_and_hides_admin(
    chart: helm.Chart, tmp_path: Path
) -> None:
    """A real Envoy run with the chart's bootstrap and arguments becomes ready on the health
    listener once the real xDS server has given it its configuration, identifies itself by
    the pod name in the chart's node cluster, and exposes nothing else of the admin API."""
    health_port, admin_port = free_port(), free_port()
    case = Case(
        "live",
        {"gateway": {"healthPort": health_port, "adminPort": admin_port, "concurrency": 1}},
    )
    r = render(chart, case)
    node_cluster = r.values["gateway"]["nodeCluster"]
    pod_name = "wakegate-gateway-7d9c5-x2k4p"
    probe = container(r.gateway())["readinessProbe"]["httpGet"]
    liveness = container(r.gateway())["livenessProbe"]["httpGet"]
    async with xds_control_plane() as cp:
        config = tmp_path / "bootstrap.yaml"
        config.write_text(yaml.safe_dump(local_bootstrap(r, tmp_path, cp.port)))
        async with (
            gateway_process(envoy_command(r, config, pod_name)) as envoy,
            aiohttp.ClientSession(base_url=f"http://127.0.0.1:{health_port}") as http,
        ):

            async def probe_status() -> int:
                assert envoy.returncode is None, "envoy exited"
                try:
                    async with http.get(probe["path"]) as resp:
                        return resp.status
                except aiohttp.ClientConnectionError:
                    return 0

            # Connected but without its configuration yet: not ready.
            for _ in range(200):
                if cp.server.connected(node_cluster):
                    break
                await asyncio.sleep(0.05)
            assert cp.server.connected(node_cluster) == 1
            await asyncio.sleep(0.5)
            assert await probe_status() != 200

            cp.set(node_cluster, {CLUSTER: {}, LISTENER: {}})
            for _ in range(200):
                if await probe_status() == 200:
                    break
                await asyncio.sleep(0.05)
            async with http.get(probe["path"]) as resp:
                assert (resp.status, (await resp.text()).strip()) == (200, "LIVE")
            async with http.get(liveness["path"]) as resp:
                assert resp.status == 200
            async with http.get("/stats/prometheus") as resp:
                assert resp.status == 200
                assert "\nenvoy_server_live{} 1\n" in await resp.text()
            for path in ("/config_dump", "/clusters", "/quitquitquit", "/ready/x", "/"):
                async with http.post(path) as resp:
                    assert resp.status == 404, path
            (node,) = [n for n in cp.server.nodes() if n.connected]
            assert (node.node_id, node.group) == (pod_name, node_cluster)
            assert envoy.returncode is None
